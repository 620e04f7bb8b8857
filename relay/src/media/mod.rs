//! The media plane: a WebRTC SFU that forwards RTP between the publishers and subscribers of
//! a room without decoding.
//!
//! # Layout
//!
//! Sans-IO decisions first, each a pure function or a plain state machine with table tests:
//! - [`keyframe`]: keyframe detection on VP8, VP9 and H.264 payloads (and VP8 frame height);
//! - [`rewrite`]: per-slot SSRC, sequence number and timestamp continuity across switches;
//! - [`picture`]: per-slot VP8/VP9 PictureID and TL0PICIDX continuity across switches;
//! - [`allocate`]: which publisher and layer feeds each video slot (grid/screen, tile size,
//!   `max_height`, bandwidth estimate with hysteresis);
//! - [`estimate`]: the bandwidth budget towards a subscriber, from its REMB reports, with
//!   upward probing;
//! - [`audio`]: which publishers fill the audio lines (RFC 6464 level), and who speaks;
//! - [`switch`]: a slot switches only on a keyframe of its new feed;
//! - [`stun`]: the USERNAME ufrag that routes a new address to its session;
//! - [`answer`]: our candidates in every bundled section of an answer, for every peer to read;
//! - [`chat`]: room chat on the WHEP session's data channel (what may be sent, stamps, rate,
//!   the history a late joiner sees);
//! - [`vp8_frames`]: whole VP8 frames from a stream's RTP packets, for the recorder slot.
//!
//! Then the SFU core, still sans-IO ([`sfu::Core`]: str0m sessions, rooms, forwarding), and the
//! I/O shell ([`plane`]: worker threads, UDP sockets, mio loops, the async API; [`datagrams`]:
//! the datagram path `media.io` picks, [`udp`]'s batched `recvmmsg`/`sendmmsg` or [`uring`]'s
//! io_uring).
//!
//! # The boundary for the control plane
//!
//! The control plane (HTTP routes, tokens, policy, audit) drives the media plane through
//! [`MediaPlane`] only:
//!
//! | call | HTTP | errors |
//! |---|---|---|
//! | [`MediaPlane::start`]`(`[`MediaConfig`]`)` | start-up | `Config`, `Io` |
//! | [`MediaPlane::publish`]`(room, participant, source, offer, tag)` | `POST /whip/{room}?source=` | `BadSdp` 400, `RoomFull`/`WorkerBusy`/`ShuttingDown` 503 |
//! | [`MediaPlane::subscribe`]`(room, participant, layout, offer, tag)` | `POST /whep/{room}?layout=` | as above |
//! | [`MediaPlane::tag`]`(session)`, [`MediaPlane::tags`]`()` | who opened a session, for PATCH/DELETE and revocations | — |
//! | [`MediaPlane::trickle`]`(session, sdpfrag)` | `PATCH` | `NotFound` 404, `BadSdp` 400 |
//! | [`MediaPlane::end`]`(session)` | `DELETE` | `NotFound` 404 |
//! | [`MediaPlane::set_layout`]`(session, layout, max_height)` | `POST /whep/{room}/{session}/layout` | `NotFound` 404 |
//! | [`MediaPlane::room_info`]`(room)` | `GET /api/rooms/{room}` (media part) | `None` = no session in the room |
//! | [`MediaPlane::start_recording`]`(room, video, sink)`, [`MediaPlane::stop_recording`]`(room)` | `POST`/`DELETE /api/rooms/{room}/recordings` (through [`crate::recordings`]) | `NotFound` = nobody in the room |
//! | [`MediaPlane::counters`]`()` | `/metrics` scrape | — |
//! | [`MediaPlane::heartbeat`]`()` / [`MediaPlane::healthy`]`(max_age)` | systemd watchdog | — |
//! | [`MediaPlane::workers`]`()`, [`MediaPlane::local_addrs`]`()` | `GET /api/info` | — |
//! | [`MediaPlane::shutdown`]`()` | stop | — |
//!
//! - `room` is the control plane's `"org/room"` key; `participant` is the token's subject.
//!   The WHIP and WHEP sessions of one participant in a room are one participant: nobody
//!   receives their own audio or video.
//! - [`SessionId`]s are 128 random bits in hex; [`SessionId::parse`] checks a path segment.
//!   The `Location` URL is the control plane's to build from it.
//! - The async calls need a tokio runtime (they wait on oneshot replies with a timeout,
//!   [`plane::COMMAND_TIMEOUT`], after which they answer `WorkerBusy`).
//! - [`MediaCounters`] maps onto the contract's metrics: `relay_rooms`, `relay_publishers`,
//!   `relay_subscribers` (gauges), `relay_media_packets_received_total`,
//!   `relay_media_packets_forwarded_total`, `relay_media_bytes_forwarded_total`,
//!   `relay_media_packets_dropped_total{reason}` (labels from [`DropReason::label`]),
//!   `relay_layer_switches_total`, `relay_keyframe_requests_total`,
//!   `relay_media_bandwidth_reports_total`, and
//!   `relay_forward_delay_seconds` ([`DelayHistogram`]: cumulative bucket counts over
//!   [`FORWARD_DELAY_BOUNDS`], sum, count). Reading them costs the workers nothing.
//!
//! # Behaviour and invariants
//!
//! - A room lives on one worker, chosen when its first session opens: the worker with the
//!   fewest sessions (then rooms) below `max_rooms_per_worker`. It goes away with its last
//!   session.
//! - Sessions that end are freed at once; a session silent for [`sfu::SILENCE_TIMEOUT`]
//!   (or never reached for [`sfu::SETUP_TIMEOUT`]) is removed on the next tick; a publisher
//!   layer silent for [`sfu::STALE_AFTER`] stops feeding slots (within a second in all).
//! - The packet path takes no lock, touches no metrics registry and allocates nothing of its
//!   own; nothing panics on network input.

pub mod allocate;
pub mod answer;
pub mod audio;
pub mod chat;
pub mod counters;
pub mod datagrams;
pub mod delay;
pub mod estimate;
pub mod keyframe;
pub mod picture;
pub mod plane;
pub mod rewrite;
pub mod sfu;
#[cfg(any(test, feature = "sim"))]
pub mod sim;
pub mod stun;
pub mod switch;
pub mod types;
pub mod udp;
pub mod uring;
pub mod vp8_frames;

pub use chat::ChatSent;
pub use counters::{DelayHistogram, DropReason, FORWARD_DELAY_BOUNDS, MediaCounters};
pub use plane::{MediaConfig, MediaPlane, SessionTag};
pub use types::{
    Layout, MediaError, ParticipantKey, PublisherInfo, RoomInfo, RoomKey, SessionAnswer, SessionId,
    SlotInfo, Source, SubscriberInfo,
};

#[cfg(test)]
mod loopback_tests;
#[cfg(test)]
mod sim_tests;
