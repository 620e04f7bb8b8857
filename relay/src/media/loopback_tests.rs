//! The whole media plane over real UDP sockets on 127.0.0.1: worker threads, mio loops, the
//! async API. Clients are the same str0m peers as in the simulated tests, driven by wall-clock
//! time. Every loop is bounded in count and time.

use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use super::sim::{Client, Net};
use super::{Layout, MediaConfig, MediaPlane, Source};

struct Peer {
    client: Client,
    socket: UdpSocket,
}

impl Peer {
    fn new() -> Peer {
        let socket = UdpSocket::bind("127.0.0.1:0").expect("bind client");
        socket.set_nonblocking(true).expect("non-blocking");
        let port = socket.local_addr().expect("addr").port();
        Peer {
            client: Client::new(port, Instant::now(), Instant::now()),
            socket,
        }
    }

    /// Read what arrived, run timers, send what the peer queued.
    fn step(&mut self, net: &mut Net, buf: &mut [u8]) {
        let now = Instant::now();
        for _ in 0..1000 {
            let Ok((n, from)) = self.socket.recv_from(buf) else {
                break;
            };
            self.client.receive(net, now, from, &buf[..n]);
        }
        self.client.tick(net, now);
        self.flush(net);
    }

    fn flush(&self, net: &mut Net) {
        while let Some((_, to, data)) = net.queue.pop_front() {
            let _ = self.socket.send_to(&data, to);
        }
    }
}

fn tag() -> super::SessionTag {
    std::sync::Arc::new(())
}

fn config() -> MediaConfig {
    MediaConfig {
        bind_ip: [127, 0, 0, 1].into(),
        first_port: 0,
        workers: 2,
        max_sessions_per_room: 8,
        max_rooms_per_worker: 4,
        io_batch: super::plane::DEFAULT_IO_BATCH,
        io: super::datagrams::IoKind::Mmsg,
        max_slots: super::plane::DEFAULT_MAX_SLOTS,
        max_audio_lines: super::plane::DEFAULT_MAX_AUDIO_LINES,
    }
}

#[tokio::test]
async fn publish_and_subscribe_over_loopback() {
    publish_and_subscribe(config()).await;
}

/// The plain path (one datagram per system call) carries the same session.
#[tokio::test]
async fn publish_and_subscribe_one_datagram_per_call() {
    publish_and_subscribe(MediaConfig {
        io_batch: 1,
        ..config()
    })
    .await;
}

/// The io_uring path carries the same session.
#[tokio::test]
async fn publish_and_subscribe_on_io_uring() {
    publish_and_subscribe(MediaConfig {
        io: super::datagrams::IoKind::Uring,
        ..config()
    })
    .await;
}

async fn publish_and_subscribe(cfg: MediaConfig) {
    let plane = MediaPlane::start(cfg).expect("start");
    assert_eq!(plane.workers(), 2);
    let mut buf = vec![0u8; 2048];
    let mut net = Net::default();

    let mut alice = Peer::new();
    let offer = alice.client.publisher_offer(7);
    let a = plane
        .publish(
            "org/r".into(),
            "alice".into(),
            Source::Camera,
            &offer,
            tag(),
        )
        .await
        .expect("publish");
    alice.client.accept(&a.answer_sdp);
    let worker: SocketAddr = plane.local_addrs()[0];
    assert!(
        a.answer_sdp.contains(&worker.port().to_string())
            || a.answer_sdp
                .contains(&plane.local_addrs()[1].port().to_string()),
        "answer names a worker's port"
    );

    let mut bob = Peer::new();
    let offer = bob.client.subscriber_offer(1, 1);
    let b = plane
        .subscribe(
            "org/r".into(),
            "bob".into(),
            Layout::Grid,
            true,
            &offer,
            tag(),
        )
        .await
        .expect("subscribe");
    bob.client.accept(&b.answer_sdp);

    // Run for at most 10 s of wall time until bob has seen 30 of alice's video packets.
    let start = Instant::now();
    let mut next_frame = start;
    let mut next_audio = start;
    while start.elapsed() < Duration::from_secs(10) {
        let now = Instant::now();
        if now >= next_frame {
            next_frame += Duration::from_millis(33);
            alice.client.peer.send_frame(now);
            alice.client.drain(&mut net, now);
            alice.flush(&mut net);
        }
        if now >= next_audio {
            next_audio += Duration::from_millis(20);
            alice.client.peer.send_audio(now);
            alice.client.drain(&mut net, now);
            alice.flush(&mut net);
        }
        alice.step(&mut net, &mut buf);
        bob.step(&mut net, &mut buf);
        if bob.client.got.iter().filter(|g| g.publisher == 7).count() >= 30 {
            break;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    let video = bob.client.got.iter().filter(|g| g.publisher == 7).count();
    assert!(video >= 30, "bob got {video} video packets from alice");
    // One tile: the highest layer.
    assert_eq!(bob.client.got.last().map(|g| g.layer), Some(2));
    assert!(!bob.client.got_audio.is_empty(), "bob got alice's audio");

    let c = plane.counters();
    assert!(c.packets_forwarded >= 30, "{c:?}");
    assert!(c.forward_delay.count > 0, "forward delay observed");
    assert_eq!((c.rooms, c.publishers, c.subscribers), (1, 1, 1));
    let beats = plane.heartbeat();
    assert!(
        beats.iter().all(|h| h.elapsed() < Duration::from_secs(2)),
        "workers alive"
    );
    assert!(plane.healthy(Duration::from_secs(2)));

    let info = plane.room_info(&"org/r".to_owned()).await.expect("room");
    assert_eq!(info.publishers.len(), 1);
    assert_eq!(info.publishers[0].layers, vec!["l", "m", "h"]);
    assert_eq!(
        info.subscribers[0].slots[0].publisher,
        Some(a.session.clone())
    );
    assert_eq!(info.subscribers[0].slots[0].layer.as_deref(), Some("h"));

    // Ending both sessions frees the room at once.
    plane.end(&a.session).await.expect("end alice");
    assert_eq!(
        plane.end(&a.session).await,
        Err(super::MediaError::NotFound)
    );
    plane.end(&b.session).await.expect("end bob");
    assert!(plane.room_info(&"org/r".to_owned()).await.is_none());
    assert_eq!(plane.counters().rooms, 0);

    plane.shutdown();
    let offer = Peer::new().client.publisher_offer(1);
    let r = plane
        .publish("org/r".into(), "x".into(), Source::Camera, &offer, tag())
        .await;
    assert_eq!(r.err(), Some(super::MediaError::ShuttingDown));
}

#[tokio::test]
async fn bad_offers_and_limits() {
    let plane = MediaPlane::start(MediaConfig {
        max_sessions_per_room: 1,
        max_slots: 4,
        ..config()
    })
    .expect("start");
    let r = plane
        .publish("org/r".into(), "u".into(), Source::Camera, "not sdp", tag())
        .await;
    assert!(matches!(r, Err(super::MediaError::BadSdp(_))), "{r:?}");
    assert!(
        plane.room_info(&"org/r".to_owned()).await.is_none(),
        "no room left behind"
    );

    let offer = Peer::new().client.publisher_offer(1);
    let a = plane
        .publish("org/r".into(), "u".into(), Source::Camera, &offer, tag())
        .await
        .expect("first fits");
    let offer = Peer::new().client.subscriber_offer(1, 0);
    let r = plane
        .subscribe(
            "org/r".into(),
            "v".into(),
            Layout::Grid,
            true,
            &offer,
            tag(),
        )
        .await;
    assert_eq!(r.err(), Some(super::MediaError::RoomFull));
    let bogus = super::SessionId::parse(&"0".repeat(32)).expect("id");
    assert_eq!(plane.end(&bogus).await, Err(super::MediaError::NotFound));
    plane
        .trickle(
            &a.session,
            "a=candidate:1 1 udp 2113937151 127.0.0.1 50000 typ host\r\n",
        )
        .await
        .expect("trickle");
    assert!(matches!(
        plane.trickle(&a.session, "a=candidate:garbage").await,
        Err(super::MediaError::BadSdp(_))
    ));
    plane.shutdown();
}

#[test]
fn refuses_unspecified_bind_address() {
    let r = MediaPlane::start(MediaConfig {
        bind_ip: [0, 0, 0, 0].into(),
        ..config()
    });
    assert!(matches!(r, Err(super::MediaError::Config(_))));
}

#[test]
fn offers_are_held_to_the_slot_and_audio_line_caps() {
    use super::plane::check_offer_size;
    let offer = |video: usize, audio: usize, other: usize| {
        let mut s = String::from("v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\n");
        for (kind, n) in [("video", video), ("audio", audio), ("application", other)] {
            for _ in 0..n {
                s.push_str(&format!("m={kind} 9 UDP/TLS/RTP/SAVPF 96\r\n"));
            }
        }
        s
    };
    #[rustfmt::skip]
    let table = [
        ((16, 8, 1), true),
        ((17, 0, 0), false),
        ((0, 9, 0), false),
        ((1, 1, 2), false),
        ((0, 0, 0), true),
    ];
    for ((v, a, o), ok) in table {
        assert_eq!(
            check_offer_size(&offer(v, a, o), 16, 8).is_ok(),
            ok,
            "{v} {a} {o}"
        );
    }
}

#[tokio::test]
async fn a_session_keeps_its_openers_tag_until_it_ends() {
    let plane = MediaPlane::start(config()).expect("start");
    let offer = Peer::new().client.publisher_offer(1);
    let a = plane
        .publish(
            "org/r".into(),
            "alice".into(),
            Source::Camera,
            &offer,
            std::sync::Arc::new("alice's token"),
        )
        .await
        .expect("publish");
    let offer = Peer::new().client.subscriber_offer(1, 0);
    let b = plane
        .subscribe(
            "org/r".into(),
            "bob".into(),
            Layout::Grid,
            true,
            &offer,
            std::sync::Arc::new("bob's token"),
        )
        .await
        .expect("subscribe");
    let said = |id| {
        plane
            .tag(id)
            .and_then(|t| t.downcast::<&str>().ok())
            .map(|s| *s)
    };
    assert_eq!(said(&a.session), Some("alice's token"));
    assert_eq!(said(&b.session), Some("bob's token"));
    assert_eq!(plane.tags().len(), 2);
    plane.end(&a.session).await.expect("end");
    // The worker unmaps what it removed as it goes on; the tag goes with the session.
    let deadline = Instant::now() + Duration::from_secs(5);
    while said(&a.session).is_some() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(said(&a.session), None);
    assert_eq!(plane.tags().len(), 1);
    assert_eq!(
        plane.end(&a.session).await,
        Err(super::MediaError::NotFound)
    );
    plane.shutdown();
}
