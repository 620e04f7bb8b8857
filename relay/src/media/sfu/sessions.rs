//! Sessions and their str0m setup: opening a WHIP or WHEP session from its offer, trickle,
//! layout, ending and removing one, and what the room looks like from outside.

use super::*;

impl Core {
    /// Accept a WHIP offer.
    pub fn publish(
        &mut self,
        room: &str,
        user: &str,
        source: Source,
        offer_sdp: &str,
        now: Instant,
        wire: &mut dyn Wire,
    ) -> Result<SessionAnswer, MediaError> {
        self.open(room, user, Some(source), offer_sdp, now, wire)
    }

    /// Accept a WHEP offer. `keep_chat`: the room may keep its last chat messages for late
    /// joiners (false in a `secure_view` room).
    #[allow(clippy::too_many_arguments)]
    pub fn subscribe(
        &mut self,
        room: &str,
        user: &str,
        layout: Layout,
        keep_chat: bool,
        offer_sdp: &str,
        now: Instant,
        wire: &mut dyn Wire,
    ) -> Result<SessionAnswer, MediaError> {
        let answer = self.open(room, user, None, offer_sdp, now, wire)?;
        if let Some(r) = self.rooms.get_mut(room) {
            r.chat.set_keep(keep_chat);
        }
        if let Some(idx) = self.by_id.get(&answer.session).copied()
            && let Some(Session {
                role: Role::Subscriber(sub),
                ..
            }) = self.sessions[idx].as_mut()
        {
            sub.layout = layout;
        }
        self.reallocate(room, now, wire);
        self.pump(now, wire);
        Ok(answer)
    }

    pub(super) fn open(
        &mut self,
        room: &str,
        user: &str,
        publish: Option<Source>,
        offer_sdp: &str,
        now: Instant,
        wire: &mut dyn Wire,
    ) -> Result<SessionAnswer, MediaError> {
        match self.rooms.get(room) {
            Some(r) if r.members.len() >= self.cfg.max_sessions_per_room => {
                return Err(MediaError::RoomFull);
            }
            None if self.rooms.len() >= self.cfg.max_rooms => return Err(MediaError::WorkerBusy),
            _ => {}
        }
        let offer = SdpOffer::from_sdp_string(offer_sdp).map_err(bad_sdp)?;
        let mut rtc = new_rtc(publish.is_none(), now);
        let candidate = Candidate::host(self.cfg.local, "udp")
            .map_err(|e| MediaError::Config(format!("host candidate: {e}")))?;
        rtc.add_local_candidate(candidate);
        let answer = rtc.sdp_api().accept_offer(offer).map_err(bad_sdp)?;
        let ufrag = rtc.direct_api().local_ice_credentials().ufrag;
        let id = SessionId::random()?;
        let generation = self.next_gen;
        self.next_gen = self.next_gen.wrapping_add(1).max(1);
        let idx = self.free.pop().unwrap_or_else(|| {
            self.sessions.push(None);
            self.sessions.len() - 1
        });

        // The answer's media sections. (str0m's MediaAdded events only come once connected;
        // the slots must exist before that.)
        let added: Vec<MediaSection> = answer
            .media_lines
            .iter()
            .filter_map(|line| {
                let m = rtc.media(line.mid())?;
                let rids = match m.rids_rx() {
                    Rids::Specific(r) => r.clone(),
                    _ => Vec::new(),
                };
                Some(MediaSection {
                    mid: m.mid(),
                    kind: m.kind(),
                    direction: m.direction(),
                    rids,
                })
            })
            .collect();
        let mut s = Session {
            id: id.clone(),
            generation,
            rtc,
            room: room.to_owned(),
            user: user.to_owned(),
            participant: 0,
            ufrag: ufrag.clone(),
            addrs: Vec::new(),
            created: now,
            last_rx: None,
            next_timeout: now,
            dead: false,
            role: Role::Subscriber(Subscriber::new()),
        };

        let r = self.rooms.entry(room.to_owned()).or_default();
        let participant = match r.participants.get_mut(user) {
            Some((p, refs)) => {
                *refs += 1;
                *p
            }
            None => {
                let p = r.next_participant;
                r.next_participant += 1;
                r.participants.insert(user.to_owned(), (p, 1));
                p
            }
        };
        s.participant = participant;
        s.role = match publish {
            Some(source) => {
                let codecs = s
                    .rtc
                    .codec_config()
                    .params()
                    .iter()
                    .map(|p| (p.pt(), p.spec().codec, p.spec().clock_rate.get()))
                    .collect();
                let mut tracks = Vec::new();
                for m in added.iter().filter(|m| m.direction.is_receiving()) {
                    let layers = if m.rids.is_empty() {
                        vec![Layer::new(None)]
                    } else {
                        m.rids.iter().map(|r| Layer::new(Some(*r))).collect()
                    };
                    let order = r.next_order;
                    r.next_order += 1;
                    tracks.push(Track {
                        id: track_id(idx, generation, tracks.len()),
                        mid: m.mid,
                        kind: m.kind,
                        order,
                        layers,
                        loudness: Loudness::default(),
                    });
                }
                Role::Publisher(Publisher {
                    source,
                    tracks,
                    codecs,
                    last_spoke: None,
                })
            }
            None => {
                let mut sub = Subscriber::new();
                for m in added.iter().filter(|m| m.direction.is_sending()) {
                    let full = match m.kind {
                        MediaKind::Video => sub.video.len() >= MAX_LINES,
                        MediaKind::Audio => sub.audio.len() >= MAX_LINES,
                    };
                    if full {
                        continue;
                    }
                    let Some(ssrc) = tx_ssrc(&mut s.rtc, m.mid) else {
                        continue;
                    };
                    let pts = line_pts(&s.rtc, m.mid);
                    // Start numbering somewhere the SSRC picks, below 2^15 so no rollover
                    // counter needs signalling for a long while.
                    let rw = Rewriter::new((*ssrc & 0x7fff) as u16, (*ssrc).rotate_left(7));
                    match m.kind {
                        MediaKind::Video => sub.video.push(VideoSlot {
                            mid: m.mid,
                            ssrc,
                            pts,
                            gate: SlotGate::default(),
                            rw,
                            pics: PictureIds::default(),
                            pending: Pending::default(),
                        }),
                        MediaKind::Audio => sub.audio.push(AudioLine {
                            ssrc,
                            pts,
                            track: None,
                            rw,
                            pending: Pending::default(),
                        }),
                    }
                }
                sub.prev = vec![None; sub.video.len()];
                Role::Subscriber(sub)
            }
        };
        // Declaring streams is an input too: drain again.
        drain(idx, &mut s, wire, &mut self.events, &mut self.book);
        r.members.push(idx);
        self.by_id.insert(id.clone(), idx);
        self.by_ufrag.insert(ufrag, idx);
        self.sessions[idx] = Some(s);
        self.update_gauges();
        Ok(SessionAnswer {
            session: id,
            answer_sdp: crate::media::answer::candidates_in_every_section(&answer.to_sdp_string()),
        })
    }

    /// Add trickled remote candidates (`application/trickle-ice-sdpfrag`).
    pub fn trickle(
        &mut self,
        id: &SessionId,
        frag: &str,
        now: Instant,
        wire: &mut dyn Wire,
    ) -> Result<(), MediaError> {
        let idx = *self.by_id.get(id).ok_or(MediaError::NotFound)?;
        let Some(s) = self.sessions[idx].as_mut() else {
            return Err(MediaError::NotFound);
        };
        for line in frag.lines() {
            let line = line.trim();
            let Some(c) = line.strip_prefix("a=") else {
                continue;
            };
            if !c.starts_with("candidate:") {
                continue;
            }
            let cand = Candidate::from_sdp_string(c).map_err(bad_sdp)?;
            s.rtc.add_remote_candidate(cand);
        }
        drain(idx, s, wire, &mut self.events, &mut self.book);
        self.pump(now, wire);
        Ok(())
    }

    /// End a session now, freeing everything it holds.
    pub fn end(
        &mut self,
        id: &SessionId,
        now: Instant,
        wire: &mut dyn Wire,
    ) -> Result<(), MediaError> {
        let idx = *self.by_id.get(id).ok_or(MediaError::NotFound)?;
        self.remove(idx, now, wire);
        self.pump(now, wire);
        Ok(())
    }

    /// Change a subscriber's layout and height cap.
    pub fn set_layout(
        &mut self,
        id: &SessionId,
        layout: Layout,
        max_height: Option<u32>,
        now: Instant,
        wire: &mut dyn Wire,
    ) -> Result<(), MediaError> {
        let idx = *self.by_id.get(id).ok_or(MediaError::NotFound)?;
        let Some(Session {
            role: Role::Subscriber(sub),
            room,
            ..
        }) = self.sessions[idx].as_mut()
        else {
            return Err(MediaError::NotFound);
        };
        sub.layout = layout;
        sub.max_height = max_height;
        let room = room.clone();
        self.reallocate(&room, now, wire);
        self.pump(now, wire);
        Ok(())
    }

    /// The room's publishers and subscribers, as `GET /api/rooms/{room}` shows them.
    pub fn room_info(&self, room: &str) -> Option<RoomInfo> {
        let r = self.rooms.get(room)?;
        let mut info = RoomInfo {
            room: room.to_owned(),
            publishers: Vec::new(),
            subscribers: Vec::new(),
            speaker: last_speaker(&self.sessions, &r.members).map(|s| s.id.clone()),
        };
        for &idx in &r.members {
            let Some(s) = self.sessions[idx].as_ref() else {
                continue;
            };
            match &s.role {
                Role::Publisher(p) => info.publishers.push(PublisherInfo {
                    session: s.id.clone(),
                    user: s.user.clone(),
                    source: p.source,
                    layers: p
                        .tracks
                        .iter()
                        .filter(|t| t.kind == MediaKind::Video)
                        .flat_map(|t| t.layers.iter())
                        .map(|l| l.rid.map(|r| r.to_string()).unwrap_or_default())
                        .collect(),
                }),
                Role::Subscriber(sub) => info.subscribers.push(SubscriberInfo {
                    session: s.id.clone(),
                    user: s.user.clone(),
                    layout: sub.layout,
                    slots: sub
                        .video
                        .iter()
                        .map(|v| {
                            let feed = v.gate.current();
                            let layer = feed.and_then(|f| self.layer_of(f));
                            SlotInfo {
                                mid: v.mid.to_string(),
                                publisher: layer.as_ref().map(|(id, _)| id.clone()),
                                layer: layer.map(|(_, rid)| rid),
                            }
                        })
                        .collect(),
                }),
            }
        }
        Some(info)
    }

    /// The publishing session and the rid of a feed.
    pub(super) fn layer_of(&self, f: Feed) -> Option<(SessionId, String)> {
        let (idx, generation, no) = track_parts(f.track);
        let s = self
            .sessions
            .get(idx)?
            .as_ref()
            .filter(|s| s.generation == generation)?;
        let Role::Publisher(p) = &s.role else {
            return None;
        };
        let l = p.tracks.get(no)?.layers.get(usize::from(f.layer))?;
        Some((
            s.id.clone(),
            l.rid.map(|r| r.to_string()).unwrap_or_default(),
        ))
    }

    /// Remove a session and every reference to it.
    pub(super) fn remove(&mut self, idx: usize, now: Instant, wire: &mut dyn Wire) {
        let Some(mut s) = self.sessions[idx].take() else {
            return;
        };
        self.free.push(idx);
        self.by_id.remove(&s.id);
        self.by_ufrag.remove(&s.ufrag);
        for a in &s.addrs {
            self.by_addr.remove(a);
        }
        s.rtc.disconnect();
        if let Role::Subscriber(sub) = &mut s.role {
            for v in &mut sub.video {
                self.book.dropped(&mut v.pending);
            }
            for a in &mut sub.audio {
                self.book.dropped(&mut a.pending);
            }
        }
        let mut empty = false;
        if let Some(r) = self.rooms.get_mut(&s.room) {
            r.members.retain(|&m| m != idx);
            if let Some((_, refs)) = r.participants.get_mut(&s.user) {
                *refs -= 1;
                if *refs == 0 {
                    r.participants.remove(&s.user);
                }
            }
            if let Role::Publisher(p) = &s.role {
                for &m in &r.members {
                    let Some(Session {
                        role: Role::Subscriber(sub),
                        ..
                    }) = self.sessions[m].as_mut()
                    else {
                        continue;
                    };
                    for t in &p.tracks {
                        for v in &mut sub.video {
                            v.gate.forget_track(t.id);
                        }
                        for l in &mut sub.audio {
                            if l.track == Some(t.id) {
                                l.track = None;
                            }
                        }
                        for f in sub.prev.iter_mut() {
                            if f.is_some_and(|f| f.track == t.id) {
                                *f = None;
                            }
                        }
                    }
                }
            }
            empty = r.members.is_empty();
        }
        if let Role::Publisher(p) = &s.role {
            for t in &p.tracks {
                self.recorder_forgets(&s.room, t.id);
            }
        }
        self.gone_sessions.push(s.id.clone());
        if empty {
            self.rooms.remove(&s.room);
            self.gone_rooms.push(s.room.clone());
        } else {
            self.reallocate(&s.room, now, wire);
        }
        self.update_gauges();
    }

    /// End every session (shutdown).
    pub fn close_all(&mut self, now: Instant, wire: &mut dyn Wire) {
        for idx in 0..self.sessions.len() {
            self.remove(idx, now, wire);
        }
        self.events.clear();
    }
}

pub(super) fn video_codec(c: Codec) -> Option<VideoCodec> {
    match c {
        Codec::Vp8 => Some(VideoCodec::Vp8),
        Codec::Vp9 => Some(VideoCodec::Vp9),
        Codec::H264 => Some(VideoCodec::H264),
        _ => None,
    }
}

/// An SDP error as the client is told it: the parser's reasons, without the position it gives
/// as a memory address (`Parse error at PointerOffset(0x7f...)`) or anything else in hex.
pub(super) fn bad_sdp(e: impl std::fmt::Display) -> MediaError {
    let text = e.to_string();
    let reasons: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with("Parse error at"))
        .collect();
    let clean: Vec<String> = reasons
        .join("; ")
        .split(' ')
        .filter(|w| !w.contains("0x"))
        .map(String::from)
        .collect();
    let clean = clean.join(" ");
    MediaError::BadSdp(if clean.is_empty() {
        "the offer does not parse".into()
    } else {
        clean
    })
}

/// How often a subscriber's session reports its receiver's loss.
const LOSS_STATS_INTERVAL: Duration = Duration::from_secs(1);

/// The header extensions a subscriber's session negotiates, each written into every copy it
/// sends that has a value for it: the MID (demultiplexing in the bundle), abs-send-time (the
/// receiver's estimate, hence REMB) and the audio level. Not the stream ids (a subscriber gets
/// one stream per line, its SSRC in the answer), nor transport-cc (see [`new_rtc`]), nor video
/// orientation (not forwarded). str0m walks the whole map for each copy, twice.
const SUBSCRIBER_EXTENSIONS: [Extension; 3] = [
    Extension::RtpMid,
    Extension::AbsoluteSendTime,
    Extension::AudioLevel,
];

/// Build a session's `Rtc`: ICE-lite server in RTP mode, with only codecs whose keyframes we
/// can recognise (a switch must wait for one), and no RED (audio is forwarded as is), and no
/// send-side bandwidth estimation, so no pacer holds a forwarded packet back.
///
/// A subscriber's session also offers no transport-cc (neither the header extension nor the
/// feedback): a browser then estimates on its side from abs-send-time and reports by REMB,
/// which [`super::super::estimate`] turns into the budget. A publisher's keeps transport-cc, so
/// the browser's own send-side estimate gets our feedback.
pub(super) fn new_rtc(subscriber: bool, now: Instant) -> Rtc {
    let mut cfg = RtcConfig::new()
        .set_ice_lite(true)
        .set_rtp_mode(true)
        .clear_codecs()
        .enable_opus(true, false)
        .enable_vp8(true)
        .enable_h264(true)
        .enable_vp9(true);
    if subscriber {
        let mut exts = ExtensionMap::empty();
        for (id, ext) in ExtensionMap::standard().iter() {
            if SUBSCRIBER_EXTENSIONS.contains(ext) {
                exts.set(id, ext.clone());
            }
        }
        cfg = cfg.set_extension_map(exts);
        let params = cfg
            .codec_config()
            .params()
            .iter()
            .cloned()
            .map(|mut p| {
                p.set_fb_transport_cc(false);
                p
            })
            .collect();
        *cfg.codec_config() = CodecConfig::new_from_payload_params(params);
        // The receiver's loss, from its receiver reports, once a second: a probe on a link so
        // full that the receiver's estimate stops moving fails by its loss instead.
        cfg = cfg.set_stats_interval(Some(LOSS_STATS_INTERVAL));
    }
    cfg.build(now)
}

/// The payload types negotiated on `mid`, by codec.
pub(super) fn line_pts(rtc: &Rtc, mid: Mid) -> Vec<(Codec, Pt)> {
    let Some(media) = rtc.media(mid) else {
        return Vec::new();
    };
    let remote = media.remote_pts();
    rtc.codec_config()
        .params()
        .iter()
        .filter(|p| remote.is_empty() || remote.contains(&p.pt()))
        .map(|p| (p.spec().codec, p.pt()))
        .collect()
}

/// The SSRC of the stream we send on `mid`: the one str0m declared while answering, or a new one.
pub(super) fn tx_ssrc(rtc: &mut Rtc, mid: Mid) -> Option<Ssrc> {
    let mut api = rtc.direct_api();
    let tx = match api.stream_tx_by_mid(mid, None) {
        Some(tx) => tx,
        None => {
            let ssrc = api.new_ssrc();
            let rtx = api.new_ssrc();
            api.declare_stream_tx(ssrc, Some(rtx), mid, None)
        }
    };
    tx.set_rtx_cache(RTX_PACKETS, RTX_AGE, Some(RTX_RATIO_CAP));
    Some(tx.ssrc())
}

/// How long a copy is kept for a retransmission the subscriber may ask for, and at most how
/// many: a second, as libwebrtc keeps its sent packets at the least, where str0m keeps three.
/// A NACK on an intranet comes within a few round trips of milliseconds; a shorter history
/// is a third of the memory per stream and fewer cold cache lines per copy.
const RTX_AGE: Duration = Duration::from_secs(1);
const RTX_PACKETS: usize = 1024;
/// Queued retransmissions are dropped once they pass this share of what is sent (str0m's own
/// default, kept).
const RTX_RATIO_CAP: f32 = 0.15;
