use super::*;
use relay_kit::noise;
use rusqlite::params;
use std::fs;
use std::time::Duration;

const LEASE: Duration = Duration::from_secs(3600);
const NO_QUOTA: Quotas = Quotas {
    org: None,
    user: None,
};

struct Fixture {
    _dir: tempfile::TempDir,
    store: ChunkStore,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let store = ChunkStore::open(dir.path()).unwrap();
    Fixture { _dir: dir, store }
}

/// Chunks of `data` as an uploader would cut them, with their bytes.
fn cut(data: &[u8]) -> (Manifest, Vec<Vec<u8>>) {
    let m = Manifest::scan(data).unwrap();
    let bytes = m
        .chunks()
        .iter()
        .zip(m.offsets())
        .map(|(c, o)| data[o as usize..o as usize + c.len as usize].to_vec())
        .collect();
    (m, bytes)
}

fn new<'a>(org: &'a str, owner: &'a str) -> NewUpload<'a> {
    NewUpload {
        org,
        owner,
        name: "f.bin",
        room: None,
        classification: 0,
        view_only: false,
        reader: Reader {
            clearance: 3,
            room: None,
            view_only: true,
        },
    }
}

fn send(s: &ChunkStore, plan: &UploadPlan, m: &Manifest, bytes: &[Vec<u8>], now: u64) {
    send_as(s, plan, m, bytes, now, &|_| false, &Bytes::copy_from_slice);
}

/// [`send`], each chunk `i` arriving compressed where `compressed(i)`, and its bytes in the
/// memory `arrive` puts them in.
fn send_as(
    s: &ChunkStore,
    plan: &UploadPlan,
    m: &Manifest,
    bytes: &[Vec<u8>],
    now: u64,
    compressed: &dyn Fn(u32) -> bool,
    arrive: &dyn Fn(&[u8]) -> Bytes,
) {
    for &i in &plan.missing {
        let c = m.chunks()[i as usize];
        let chunk = VerifiedChunk::check(&c.hash, arrive(&bytes[i as usize])).unwrap();
        let placed = s.write_chunk(&chunk).unwrap();
        s.chunk_received(
            &plan.id,
            Some(placed),
            &c.hash,
            c.len,
            compressed(i),
            now,
            LEASE,
        )
        .unwrap();
    }
}

fn upload(s: &ChunkStore, org: &str, data: &[u8], now: u64) -> (UploadPlan, FileRecord) {
    let (m, bytes) = cut(data);
    let plan = s
        .begin_upload(&new(org, "ann"), &m, NO_QUOTA, now, LEASE)
        .unwrap();
    send(s, &plan, &m, &bytes, now);
    let f = s.commit(&plan.id, now, true).unwrap();
    (plan, f)
}

/// A file's bytes, served chunk by chunk as a get serves them.
fn read_all(s: &ChunkStore, id: &str) -> Result<Vec<u8>> {
    let m = s.manifest(id)?;
    let mut out = Vec::new();
    for i in 0..m.chunks().len() as u32 {
        let c = s
            .chunk_to_serve(id, i)?
            .ok_or(StoreError::NotFound("chunk"))?;
        out.extend(s.read_to_serve(&c)?);
    }
    Ok(out)
}

#[test]
fn upload_commit_read_back() {
    let f = fixture();
    let data = noise(1, 3_000_000);
    let (plan, rec) = upload(&f.store, "acme", &data, 100);
    assert!(!plan.resumed);
    assert_eq!(plan.missing.len(), rec.chunks as usize);
    assert!(rec.chunks > 2);
    assert_eq!(read_all(&f.store, &rec.id).unwrap(), data);
    // Serving chunk after chunk plans the lookup once, not once per chunk.
    let replanned = f
        .store
        .db()
        .prepare_cached(files::CHUNK_TO_SERVE)
        .unwrap()
        .get_status(rusqlite::StatementStatus::RePrepare);
    assert_eq!(replanned, 0);
    assert_eq!(f.store.stored_bytes(), data.len() as u64);
    assert_eq!(f.store.list("acme").unwrap(), vec![rec.clone()]);
    assert!(f.store.list("other").unwrap().is_empty());
    assert_eq!(f.store.file(&rec.id).unwrap(), Some(rec));
    // Empty files are files too.
    let (plan, empty) = upload(&f.store, "acme", &[], 100);
    assert!(plan.missing.is_empty());
    assert_eq!(read_all(&f.store, &empty.id).unwrap(), Vec::<u8>::new());
}

#[test]
fn already_have_stays_inside_the_organisation() {
    let f = fixture();
    let data = noise(2, 2_000_000);
    upload(&f.store, "acme", &data, 100);
    let (m, _) = cut(&data);
    let same_org = f
        .store
        .begin_upload(&new("acme", "bob"), &m, NO_QUOTA, 101, LEASE)
        .unwrap();
    assert!(same_org.missing.is_empty());
    assert_eq!(same_org.deduplicated_bytes, data.len() as u64);
    let other = f
        .store
        .begin_upload(&new("other", "eve"), &m, NO_QUOTA, 101, LEASE)
        .unwrap();
    assert_eq!(other.missing.len(), m.chunks().len());
    assert_eq!(other.deduplicated_bytes, 0);
    // Claiming the chunks without sending them does not make a file.
    assert!(matches!(
        f.store.commit(&other.id, 102, true),
        Err(StoreError::Incomplete(ref v)) if v.len() == m.chunks().len()
    ));
}

#[test]
fn already_have_counts_only_what_the_uploader_may_read() {
    let f = fixture();
    let secret = noise(20, 1_500_000);
    let (m, bytes) = cut(&secret);
    let classified = NewUpload {
        classification: 3,
        room: Some("ops"),
        ..new("acme", "ann")
    };
    let plan = f
        .store
        .begin_upload(&classified, &m, NO_QUOTA, 100, LEASE)
        .unwrap();
    // While the upload is open, its received chunks are held for readers at its level only.
    send(&f.store, &plan, &m, &bytes, 100);
    let ask = |clearance, room, view_only, now| {
        let reader = Reader {
            clearance,
            room,
            view_only,
        };
        let plan = f
            .store
            .begin_upload(
                &NewUpload {
                    reader,
                    ..new("acme", "bob")
                },
                &m,
                NO_QUOTA,
                now,
                LEASE,
            )
            .unwrap();
        f.store.abort(&plan.id, now).unwrap();
        plan.missing.len()
    };
    let all = m.chunks().len();
    assert_eq!(
        ask(0, None, true, 101),
        all,
        "an open upload above the reader"
    );
    assert_eq!(ask(3, None, true, 101), 0);
    f.store.commit(&plan.id, 102, true).unwrap();
    #[rustfmt::skip]
        let table = [
            (0, None, true, all),
            (2, None, true, all),
            (3, None, true, 0),
            (3, Some("hall"), true, all),
            (3, Some("ops"), true, 0),
        ];
    for (i, (clearance, room, view_only, missing)) in table.into_iter().enumerate() {
        assert_eq!(ask(clearance, room, view_only, 103), missing, "row {i}");
    }
    // A view-only file is held only for readers that may read view-only files.
    let film = noise(21, 700_000);
    let (fm, fbytes) = cut(&film);
    let plan = f
        .store
        .begin_upload(
            &NewUpload {
                view_only: true,
                ..new("acme", "ann")
            },
            &fm,
            NO_QUOTA,
            104,
            LEASE,
        )
        .unwrap();
    send(&f.store, &plan, &fm, &fbytes, 104);
    f.store.commit(&plan.id, 104, true).unwrap();
    let browser = Reader {
        clearance: 3,
        room: None,
        view_only: false,
    };
    let again = f
        .store
        .begin_upload(
            &NewUpload {
                reader: browser,
                ..new("acme", "bob")
            },
            &fm,
            NO_QUOTA,
            105,
            LEASE,
        )
        .unwrap();
    assert_eq!(again.missing.len(), fm.chunks().len());
}

#[test]
fn restarted_upload_continues_where_it_stopped() {
    let dir = tempfile::tempdir().unwrap();
    let data = noise(3, 5_000_000);
    let (m, bytes) = cut(&data);
    assert!(m.chunks().len() >= 3);
    let first = {
        let s = ChunkStore::open(dir.path()).unwrap();
        let plan = s
            .begin_upload(&new("acme", "ann"), &m, NO_QUOTA, 100, LEASE)
            .unwrap();
        let half = UploadPlan {
            missing: plan.missing[..2].to_vec(),
            ..plan.clone()
        };
        send(&s, &half, &m, &bytes, 100);
        plan
    };
    let s = ChunkStore::open(dir.path()).unwrap();
    let again = s
        .begin_upload(&new("acme", "ann"), &m, NO_QUOTA, 200, LEASE)
        .unwrap();
    assert!(again.resumed);
    assert_eq!(again.id, first.id);
    assert_eq!(again.missing, first.missing[2..].to_vec());
    send(&s, &again, &m, &bytes, 200);
    let rec = s.commit(&again.id, 200, true).unwrap();
    assert_eq!(read_all(&s, &rec.id).unwrap(), data);
}

#[test]
fn quotas_reserve_settle_and_release() {
    let f = fixture();
    let data = noise(4, 1_000_000);
    let (m, bytes) = cut(&data);
    let q = |org, user| Quotas { org, user };
    let size = data.len() as u64;
    // Fits exactly.
    let plan = f
        .store
        .begin_upload(&new("acme", "ann"), &m, q(Some(size), None), 100, LEASE)
        .unwrap();
    assert_eq!(f.store.usage_of("acme", None, 100).unwrap(), size);
    // A second one does not fit while the first holds its reservation.
    let (m2, _) = cut(&noise(5, 10));
    let e = f
        .store
        .begin_upload(&new("acme", "bob"), &m2, q(Some(size), None), 100, LEASE)
        .unwrap_err();
    assert!(matches!(e, StoreError::Quota(ref x) if x.scope == plan::QuotaScope::Organisation));
    let e = f
        .store
        .begin_upload(&new("acme", "ann"), &m2, q(None, Some(size)), 100, LEASE)
        .unwrap_err();
    assert!(matches!(e, StoreError::Quota(ref x) if x.scope == plan::QuotaScope::User));
    // The refusals left nothing behind.
    assert_eq!(f.store.usage_of("acme", None, 100).unwrap(), size);
    send(&f.store, &plan, &m, &bytes, 100);
    let rec = f.store.commit(&plan.id, 100, true).unwrap();
    assert_eq!(f.store.usage_of("acme", Some("ann"), 100).unwrap(), size);
    f.store.remove(&rec.id, 100).unwrap();
    assert_eq!(f.store.usage_of("acme", None, 100).unwrap(), 0);
    // Aborted and expired uploads release theirs.
    let p = f
        .store
        .begin_upload(&new("acme", "ann"), &m, NO_QUOTA, 100, LEASE)
        .unwrap();
    f.store.abort(&p.id, 100).unwrap();
    assert_eq!(f.store.usage_of("acme", None, 100).unwrap(), 0);
    f.store
        .begin_upload(&new("acme", "ann"), &m, NO_QUOTA, 100, LEASE)
        .unwrap();
    assert_eq!(f.store.usage_of("acme", None, 100).unwrap(), size);
    assert_eq!(f.store.expire_uploads(100 + LEASE.as_secs()).unwrap(), 1);
    assert_eq!(f.store.usage_of("acme", None, 100).unwrap(), 0);
}

#[test]
fn gc_waits_for_grace_and_spares_live_uploads() {
    let f = fixture();
    let grace = Duration::from_secs(60);
    let data = noise(6, 2_000_000);
    let (_, rec) = upload(&f.store, "acme", &data, 100);
    let m = f.store.manifest(&rec.id).unwrap();
    assert_eq!(f.store.gc(1000, grace).unwrap().chunks, 0, "referenced");
    f.store.remove(&rec.id, 1000).unwrap();
    assert_eq!(f.store.gc(1030, grace).unwrap().chunks, 0, "in grace");
    // An upload that lists the chunks holds them, even though nobody references them.
    let p = f
        .store
        .begin_upload(&new("acme", "ann"), &m, NO_QUOTA, 1030, LEASE)
        .unwrap();
    assert_eq!(f.store.gc(2000, grace).unwrap().chunks, 0, "leased");
    f.store.abort(&p.id, 2000).unwrap();
    assert_eq!(f.store.gc(2030, grace).unwrap().chunks, 0, "grace restarts");
    let (pack, _) = f.store.locate(&m.chunks()[0].hash).unwrap().unwrap();
    let held = || {
        use std::os::unix::fs::MetadataExt;
        fs::metadata(&pack).unwrap().blocks() * 512
    };
    assert!(held() >= data.len() as u64);
    let r = f.store.gc(2061, grace).unwrap();
    assert_eq!(r.chunks as usize, m.chunks().len());
    assert_eq!(r.bytes, data.len() as u64);
    assert_eq!(f.store.stored_bytes(), 0);
    for c in m.chunks() {
        assert_eq!(f.store.locate(&c.hash).unwrap(), None, "no row");
    }
    assert!(held() < 64 << 10, "the bytes' blocks are freed: {}", held());
    // At the next start the pack, with nothing recorded in it, goes, and its registration.
    let registered = || -> i64 {
        f.store
            .db()
            .query_row("SELECT COUNT(*) FROM packs", [], |r| r.get(0))
            .unwrap()
    };
    assert_eq!(registered(), 1);
    f.store.remove_temp_files().unwrap();
    assert!(!pack.exists());
    assert_eq!(registered(), 0);
}

/// Writes `bytes` over the stored bytes of `hash` where they lie, as a disk's fault would.
fn overwrite(s: &ChunkStore, hash: &Hash, bytes: &[u8]) {
    use std::os::unix::fs::FileExt;
    let (file, at) = s.locate(hash).unwrap().unwrap();
    fs::OpenOptions::new()
        .write(true)
        .open(file)
        .unwrap()
        .write_all_at(bytes, at)
        .unwrap();
}

/// Sets the seal that the row of `hash` keeps.
fn set_seal(s: &ChunkStore, hash: &Hash, seal: &Seal) {
    s.db()
        .execute(
            "UPDATE chunks SET seal = ?2 WHERE hash = ?1",
            params![&hash[..], &seal[..]],
        )
        .unwrap();
}

#[test]
fn tampered_chunks_are_never_served_and_check_finds_them() {
    let f = fixture();
    let data = noise(7, 3_000_000);
    let (_, rec) = upload(&f.store, "acme", &data, 100);
    assert!(f.store.check().unwrap().is_clean());
    let m = f.store.manifest(&rec.id).unwrap();
    let victim = m.chunks()[1];
    let mut bytes = f
        .store
        .read_chunk(&victim.hash, victim.len)
        .unwrap()
        .to_vec();
    bytes[10] ^= 1;
    // The bytes change under the chunk's seal, as a disk's fault leaves them.
    overwrite(&f.store, &victim.hash, &bytes);
    assert!(matches!(read_all(&f.store, &rec.id), Err(StoreError::Corrupt(h)) if h == victim.hash));
    assert_eq!(f.store.corrupt_reads(), 1);
    let report = f.store.check().unwrap();
    assert_eq!(report.corrupt, vec![victim.hash]);
    // The pack gone: every chunk in it is missing.
    let (pack, _) = f.store.locate(&victim.hash).unwrap().unwrap();
    fs::remove_file(pack).unwrap();
    let report = f.store.check().unwrap();
    assert!(report.missing.contains(&victim.hash), "{report:?}");
    assert!(matches!(
        read_all(&f.store, &rec.id),
        Err(StoreError::Corrupt(_))
    ));
    // Reference counts are recounted from the files.
    f.store
        .db()
        .execute(
            "UPDATE chunks SET refs = refs + 1 WHERE hash = ?1",
            [&victim.hash[..]],
        )
        .unwrap();
    f.store
        .db()
        .execute("DELETE FROM org_chunks WHERE hash = ?1", [&victim.hash[..]])
        .unwrap();
    let report = f.store.check().unwrap();
    assert_eq!(report.miscounted, vec![victim.hash]);
    assert_eq!(
        report.org_miscounted,
        vec![("acme".to_string(), victim.hash)]
    );
    // Bytes that do not match their name cannot be handed to the store.
    assert!(
        VerifiedChunk::check(&victim.hash, bytes::Bytes::from_static(b"other bytes")).is_none()
    );
}

#[test]
fn a_read_checks_the_seal_and_without_a_matching_one_the_name() {
    let f = fixture();
    let data = noise(8, 3_000_000);
    let (_, rec) = upload(&f.store, "acme", &data, 100);
    let m = f.store.manifest(&rec.id).unwrap();
    // `a` the shorter of two chunks, so that `b`'s bytes can fill `a`'s length.
    let (mut a, mut b) = (m.chunks()[0], m.chunks()[1]);
    if a.len > b.len {
        (a, b) = (b, a);
    }
    let bytes = f.store.read_chunk(&a.hash, a.len).unwrap().to_vec();
    let seal = chunk_seal(&a.hash, &bytes);
    assert_eq!(
        f.store.place_of(&a.hash).unwrap().unwrap().seal,
        Some(seal),
        "recorded with its seal"
    );
    let serves = |c: ChunkRef| f.store.read_chunk(&c.hash, c.len).is_ok();
    // A damaged seal over intact bytes: the name vouches for them.
    set_seal(&f.store, &a.hash, &[0; 8]);
    assert!(serves(a));
    set_seal(&f.store, &a.hash, &seal);
    // A damaged byte under the chunk's own seal.
    let mut bad_byte = bytes.clone();
    bad_byte[a.len as usize - 1] ^= 1;
    overwrite(&f.store, &a.hash, &bad_byte);
    assert!(!serves(a));
    assert!(f.store.check().unwrap().corrupt.contains(&a.hash));
    overwrite(&f.store, &a.hash, &bytes);
    assert!(serves(a));
    assert!(f.store.check().unwrap().is_clean());
    // The pack cut short inside the last chunk: its bytes come back short, under their seal.
    let last = m.chunks()[m.chunks().len() - 1];
    assert!(![a.hash, b.hash].contains(&last.hash));
    let last_bytes = f.store.read_chunk(&last.hash, last.len).unwrap();
    let (pack, at) = f.store.locate(&last.hash).unwrap().unwrap();
    let whole = fs::metadata(&pack).unwrap().len();
    fs::OpenOptions::new()
        .write(true)
        .open(&pack)
        .unwrap()
        .set_len(at + u64::from(last.len) - 1)
        .unwrap();
    assert!(!serves(last), "short");
    assert!(
        f.store.check().unwrap().corrupt.contains(&last.hash),
        "short"
    );
    fs::OpenOptions::new()
        .write(true)
        .open(&pack)
        .unwrap()
        .set_len(whole)
        .unwrap();
    overwrite(&f.store, &last.hash, &last_bytes);
    assert!(serves(last));
    // What a read checks is the seal: bytes sealed anew after a change (no disk fault does
    // that) pass it, and only the operator's check and the client's, both by the name, find
    // them.
    let mut resealed = bytes.clone();
    resealed[0] ^= 1;
    overwrite(&f.store, &a.hash, &resealed);
    set_seal(&f.store, &a.hash, &chunk_seal(&a.hash, &resealed));
    assert!(serves(a), "the read takes the seal's word");
    assert!(f.store.check().unwrap().corrupt.contains(&a.hash));
    // Another chunk's bytes with their own seal, under this name (the length made to fit).
    let other = f.store.read_chunk(&b.hash, b.len).unwrap()[..a.len as usize].to_vec();
    overwrite(&f.store, &a.hash, &other);
    set_seal(&f.store, &a.hash, &chunk_seal(&b.hash, &other));
    assert!(!serves(a), "a sum seeded with another name");
    assert_eq!(f.store.corrupt_reads(), 3);
}

#[test]
fn a_chunk_collected_while_the_check_runs_is_no_finding() {
    let f = fixture();
    let (_, rec) = upload(&f.store, "acme", &noise(13, 3_000_000), 100);
    let m = f.store.manifest(&rec.id).unwrap();
    // The check's reading of the rows, then a collection before it reads the bytes.
    let rows: Vec<maintenance::Located> = f
        .store
        .db()
        .prepare("SELECT hash, len, pack, at FROM chunks")
        .unwrap()
        .query_map([], maintenance::located)
        .unwrap()
        .collect::<rusqlite::Result<_>>()
        .unwrap();
    f.store.remove(&rec.id, 200).unwrap();
    assert_eq!(
        f.store.gc(300, Duration::ZERO).unwrap().chunks as usize,
        m.chunks().len()
    );
    let mut report = CheckReport::default();
    f.store.check_chunks(rows, &mut report).unwrap();
    assert_eq!(report.checked as usize, m.chunks().len());
    assert!(report.is_clean(), "{report:?}");
}

#[test]
fn a_chunk_without_its_row_is_never_served() {
    let f = fixture();
    let (_, rec) = upload(&f.store, "acme", &noise(14, 3_000_000), 100);
    let victim = f.store.manifest(&rec.id).unwrap().chunks()[1];
    f.store
        .db()
        .execute("DELETE FROM chunks WHERE hash = ?1", [&victim.hash[..]])
        .unwrap();
    assert!(matches!(read_all(&f.store, &rec.id), Err(StoreError::Corrupt(h)) if h == victim.hash));
    assert_eq!(f.store.check().unwrap().missing, vec![victim.hash]);
}

#[test]
fn a_lost_catalogue_leaves_the_packs_alone() {
    let dir = tempfile::tempdir().unwrap();
    let (pack, len) = {
        let store = ChunkStore::open(dir.path()).unwrap();
        let (_, rec) = upload(&store, "acme", &noise(12, 2_000_000), 100);
        let m = store.manifest(&rec.id).unwrap();
        let (pack, _) = store.locate(&m.chunks()[0].hash).unwrap().unwrap();
        let len = fs::metadata(&pack).unwrap().len();
        (pack, len)
    };
    for name in ["files.db", "files.db-wal", "files.db-shm"] {
        let _ = fs::remove_file(dir.path().join(name));
    }
    let store = ChunkStore::open(dir.path()).unwrap();
    store.remove_temp_files().unwrap();
    assert_eq!(
        fs::metadata(&pack).unwrap().len(),
        len,
        "not the new catalogue's to cut"
    );
}

#[test]
fn bytes_whose_record_never_came_are_cut_off_at_the_next_start() {
    let dir = tempfile::tempdir().unwrap();
    let data = noise(9, 3_000_000);
    let (pack, recorded) = {
        let store = ChunkStore::open(dir.path()).unwrap();
        let (_, rec) = upload(&store, "acme", &data, 100);
        let m = store.manifest(&rec.id).unwrap();
        let last = m.chunks()[m.chunks().len() - 1];
        let (pack, at) = store.locate(&last.hash).unwrap().unwrap();
        // A chunk written and then a crash before its record.
        let extra = piece(&noise(10, 500_000));
        std::mem::forget(store.write_chunk(&extra).unwrap());
        assert!(fs::metadata(&pack).unwrap().len() > at + u64::from(last.len));
        (pack, at + u64::from(last.len))
    };
    let store = ChunkStore::open(dir.path()).unwrap();
    store.remove_temp_files().unwrap();
    let registered: i64 = store
        .db()
        .query_row("SELECT COUNT(*) FROM packs", [], |r| r.get(0))
        .unwrap();
    assert_eq!(
        registered, 1,
        "a pack with recorded chunks stays registered"
    );
    assert_eq!(
        fs::metadata(&pack).unwrap().len(),
        recorded.next_multiple_of(crate::files::DIRECT_ALIGN as u64)
    );
    let (_, rec) = upload(&store, "acme", &data, 200);
    assert_eq!(read_all(&store, &rec.id).unwrap(), data);
    assert!(store.check().unwrap().is_clean());
}

fn piece(bytes: &[u8]) -> VerifiedChunk {
    VerifiedChunk::check(&chunk_hash(bytes), bytes.to_vec().into()).unwrap()
}

fn recording<'a>(org: &'a str, owner: &'a str) -> NewRecording<'a> {
    NewRecording {
        org,
        owner,
        name: "room-20261204-040000.webm",
        room: "room",
        classification: 2,
        kind: "meeting",
    }
}

#[test]
fn a_recording_grows_survives_reopening_and_becomes_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let store = ChunkStore::open(dir.path()).unwrap();
    let id = store
        .begin_recording(&recording("acme", "ann"), NO_QUOTA, 100)
        .unwrap();
    store
        .append_recording(&id, &piece(b"header"), 0, NO_QUOTA, 100)
        .unwrap();
    store
        .append_recording(&id, &piece(b"one"), 1, NO_QUOTA, 101)
        .unwrap();
    store
        .append_recording(&id, &piece(b"two"), 2, NO_QUOTA, 102)
        .unwrap();
    // Its bytes are charged while it runs.
    assert_eq!(store.usage_of("acme", Some("ann"), 102).unwrap(), 12);
    // A crash: the store opened again lists it with its chunks in order.
    drop(store);
    let store = ChunkStore::open(dir.path()).unwrap();
    let open = store.open_recordings().unwrap();
    assert_eq!(open.len(), 1);
    assert_eq!(
        (open[0].room.as_str(), open[0].kind.as_str()),
        ("room", "meeting")
    );
    assert_eq!(open[0].chunks.len(), 3);
    assert_eq!(open[0].duration_ms, 2, "the time the last chunk reached");
    assert_eq!(open[0].chunks[1].hash, chunk_hash(b"one"));
    // Collection leaves an open recording's chunks alone, however old.
    store.gc(10_000_000, Duration::ZERO).unwrap();
    store
        .replace_recording_chunk(&id, 0, &piece(b"HEADER+"), 103)
        .unwrap();
    // A chunk written after the new header lands beside it, not over it.
    store
        .append_recording(&id, &piece(b"three"), 3, NO_QUOTA, 103)
        .unwrap();
    let file = store.finish_recording(&id, 104).unwrap();
    assert!(store.open_recordings().unwrap().is_empty());
    assert_eq!(read_all(&store, &file.id).unwrap(), b"HEADER+onetwothree");
    assert_eq!((file.size, file.chunks, file.classification), (18, 4, 2));
    assert_eq!(file.room.as_deref(), Some("room"));
    assert_eq!(store.usage_of("acme", Some("ann"), 104).unwrap(), 18);
    // The replaced header goes with the next collection after its grace; the file stays whole.
    let gone = store.gc(200_000, Duration::from_secs(60)).unwrap();
    assert_eq!(gone.chunks, 1);
    assert_eq!(read_all(&store, &file.id).unwrap(), b"HEADER+onetwothree");
    assert!(store.check().unwrap().is_clean());
}

#[test]
fn a_recording_stops_at_the_quota_without_listing_the_chunk() {
    let f = fixture();
    let quotas = Quotas {
        org: None,
        user: Some(10),
    };
    let id = f
        .store
        .begin_recording(&recording("acme", "ann"), quotas, 100)
        .unwrap();
    f.store
        .append_recording(&id, &piece(b"12345678"), 2_000, quotas, 100)
        .unwrap();
    assert!(matches!(
        f.store
            .append_recording(&id, &piece(b"abc"), 4_000, quotas, 101),
        Err(StoreError::Quota(_))
    ));
    let file = f.store.finish_recording(&id, 102).unwrap();
    assert_eq!(read_all(&f.store, &file.id).unwrap(), b"12345678");
    // With nothing left, no recording starts.
    let full = Quotas {
        org: None,
        user: Some(8),
    };
    assert!(matches!(
        f.store
            .begin_recording(&recording("acme", "ann"), full, 103),
        Err(StoreError::Quota(_))
    ));
    // One without bytes is not a file.
    let empty = f
        .store
        .begin_recording(&recording("acme", "bob"), NO_QUOTA, 103)
        .unwrap();
    assert!(f.store.finish_recording(&empty, 104).is_err());
    f.store.discard_recording(&empty, 104).unwrap();
    assert!(f.store.open_recordings().unwrap().is_empty());
}

#[test]
fn a_chunk_cut_off_while_written_is_left_out_when_the_recording_closes() {
    let f = fixture();
    let id = f
        .store
        .begin_recording(&recording("acme", "ann"), NO_QUOTA, 100)
        .unwrap();
    f.store
        .append_recording(&id, &piece(b"header"), 0, NO_QUOTA, 100)
        .unwrap();
    f.store
        .append_recording(&id, &piece(b"one"), 1, NO_QUOTA, 101)
        .unwrap();
    // A crash after a chunk was listed and charged, before its bytes reached the disk.
    let lost = chunk_hash(b"never written");
    f.store
        .db()
        .execute(
            "INSERT INTO upload_chunks (upload, idx, hash, len, received) VALUES (?1, 2, ?2, 13, 0)",
            rusqlite::params![&id[..], &lost[..]],
        )
        .unwrap();
    f.store
        .db()
        .execute(
            "UPDATE uploads SET size = size + 13 WHERE id = ?1",
            [&id[..]],
        )
        .unwrap();
    // Listed chunks are what was received; collection meanwhile spares the claimed hash.
    assert_eq!(f.store.open_recordings().unwrap()[0].chunks.len(), 2);
    let file = f.store.finish_recording(&id, 102).unwrap();
    assert_eq!(read_all(&f.store, &file.id).unwrap(), b"headerone");
    assert_eq!(f.store.usage_of("acme", Some("ann"), 102).unwrap(), 9);
    assert!(f.store.check().unwrap().is_clean());
}

#[test]
fn a_get_compresses_again_only_what_came_compressed_or_is_not_known() {
    let f = fixture();
    let data = noise(7, 3_000_000);
    let (m, bytes) = cut(&data);
    assert!(m.chunks().len() >= 3);
    let receive = |org: &str, compressed: &dyn Fn(u32) -> bool, compressible: bool| {
        let plan = f
            .store
            .begin_upload(&new(org, "ann"), &m, NO_QUOTA, 100, LEASE)
            .unwrap();
        send_as(
            &f.store,
            &plan,
            &m,
            &bytes,
            100,
            compressed,
            &Bytes::copy_from_slice,
        );
        f.store.commit(&plan.id, 100, compressible).unwrap()
    };
    let worth = |id: &str, i: u32| {
        f.store
            .chunk_to_serve(id, i)
            .unwrap()
            .unwrap()
            .worth_compressing
    };
    // The first chunk came compressed, the others as they are.
    let rec = receive("acme", &|i| i == 0, true);
    assert!(worth(&rec.id, 0));
    for i in 1..rec.chunks {
        assert!(!worth(&rec.id, i), "chunk {i}");
    }
    assert!(
        f.store
            .chunk_to_serve(&rec.id, rec.chunks)
            .unwrap()
            .is_none()
    );
    // Another organisation sends the same chunks again, the second one compressed this time:
    // once a chunk came compressed, it is worth trying, for every file that holds it.
    let other = receive("globex", &|i| i == 1, true);
    for id in [&rec.id, &other.id] {
        assert!(worth(id, 0) && worth(id, 1), "{id}");
        assert!(!worth(id, 2), "{id}");
    }
    // A file whose type is compressed already: never, whatever its chunks did.
    let typed = receive("initech", &|_| true, false);
    for i in 0..typed.chunks {
        assert!(!worth(&typed.id, i));
    }
}

#[test]
fn a_store_of_an_earlier_release_is_upgraded_and_its_chunk_files_still_served() {
    let dir = tempfile::tempdir().unwrap();
    // The catalogue as it was before the compression verdict and the packs.
    let from = catalogue::SCHEMA
        .find("unreferenced_since INTEGER,")
        .unwrap();
    let to = catalogue::SCHEMA.find("seal               BLOB\n").unwrap();
    let old_schema = format!(
        "{}unreferenced_since INTEGER\n{}",
        &catalogue::SCHEMA[..from],
        &catalogue::SCHEMA[to + "seal               BLOB\n".len()..]
    );
    assert!(!old_schema.contains("compresses") && !old_schema.contains("pack  "));
    // One chunk in a file of its own, as an earlier release kept it.
    let bytes = noise(11, 70_000);
    let hash = chunk_hash(&bytes);
    {
        let c = Connection::open(dir.path().join("files.db")).unwrap();
        c.execute_batch(&old_schema).unwrap();
        c.execute(
            "INSERT INTO chunks (hash, len, refs) VALUES (?1, ?2, 1)",
            params![&hash[..], bytes.len() as i64],
        )
        .unwrap();
        c.execute_batch(&format!(
            "INSERT INTO files VALUES ('old', 'acme', 'ann', 'f.bin', NULL, {len}, x'{root}', 1,
                 0, 0, 1, 10);
             INSERT INTO file_chunks VALUES ('old', 0, x'{root}', {len});
             INSERT INTO org_chunks VALUES ('acme', x'{root}', 1);",
            len = bytes.len(),
            root = hex::encode(hash)
        ))
        .unwrap();
        let hex = hex::encode(hash);
        let file = dir.path().join("chunks").join(&hex[..2]).join(&hex[2..]);
        fs::create_dir_all(file.parent().unwrap()).unwrap();
        fs::write(&file, &bytes).unwrap();
    }
    let store = ChunkStore::open(dir.path()).unwrap();
    store.remove_temp_files().unwrap();
    let kept: (i64, Option<bool>, Option<i64>) = store
        .db()
        .query_row("SELECT len, compresses, pack FROM chunks", [], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })
        .unwrap();
    assert_eq!(kept, (bytes.len() as i64, None, None));
    assert_eq!(store.read_chunk(&hash, bytes.len() as u32).unwrap(), bytes);
    assert_eq!(
        read_all(&store, "old").unwrap(),
        bytes,
        "served as a get serves it"
    );
    assert!(store.check().unwrap().is_clean());
    let (file, at) = store.locate(&hash).unwrap().unwrap();
    assert_eq!(at, 0);
    store.remove("old", 50).unwrap();
    assert_eq!(store.gc(100, Duration::from_secs(10)).unwrap().chunks, 1);
    assert!(!file.exists(), "collected");
    drop(store);
    // Opening again finds the columns there and leaves them.
    ChunkStore::open(dir.path()).unwrap();
}

/// The steps of the plan SQLite makes for `sql`.
fn plan(s: &ChunkStore, sql: &str) -> Vec<String> {
    let db = s.db();
    let mut stmt = db.prepare(&format!("EXPLAIN QUERY PLAN {sql}")).unwrap();
    let n = stmt.parameter_count();
    stmt.query_map(rusqlite::params_from_iter((0..n).map(|_| 1)), |r| {
        r.get::<_, String>(3)
    })
    .unwrap()
    .collect::<rusqlite::Result<_>>()
    .unwrap()
}

#[test]
fn statements_run_per_chunk_start_from_the_chunk() {
    let f = fixture();
    // Left to itself, the planner marked a received chunk by walking all of its upload's chunks,
    // and answered whether an organisation holds a chunk by walking the organisation's files and
    // uploads: costs that grow with the file and with the organisation.
    for sql in [
        uploads::MARK_RECEIVED,
        uploads::OTHER_PLACES,
        catalogue::ORG_HAS,
        files::CHUNK_TO_SERVE,
    ] {
        let steps = plan(&f.store, sql);
        assert!(
            steps
                .iter()
                .all(|s| !s.starts_with("SCAN ") || s == "SCAN CONSTANT ROW"),
            "{sql}: {steps:?}"
        );
        assert!(
            steps.iter().all(|s| !s.contains("(org=")
                && !s.contains("(upload=?)")
                && !s.contains("files_org")
                && !s.contains("uploads_key")),
            "{sql}: {steps:?}"
        );
    }
    for sql in [uploads::MARK_RECEIVED, uploads::OTHER_PLACES] {
        let steps = plan(&f.store, sql);
        assert!(
            steps
                .iter()
                .any(|s| s.contains("upload_chunks_hash (hash=? AND received=? AND upload=?)")),
            "{sql}: {steps:?}"
        );
    }
    // Each branch of the holding check finds the chunk's rows first, then their file or upload.
    let has = plan(&f.store, catalogue::ORG_HAS);
    let at = |needle: &str| has.iter().position(|s| s.contains(needle));
    assert!(at("file_chunks_hash (hash=?)") < at("SEARCH f "), "{has:?}");
    assert!(
        at("upload_chunks_hash (hash=?") < at("SEARCH u "),
        "{has:?}"
    );
}

#[test]
fn removed_files_leave_no_organisation_rows_at_nothing() {
    let f = fixture();
    let a = noise(21, 3_000_000);
    let mut b = a[..1_500_000].to_vec();
    b.extend_from_slice(&noise(22, 1_500_000));
    let (_, fa) = upload(&f.store, "acme", &a, 100);
    let (_, fb) = upload(&f.store, "acme", &b, 100);
    let (_, other) = upload(&f.store, "other", &a, 100);
    let rows = |org: &str| -> Vec<(Vec<u8>, i64)> {
        f.store
            .db()
            .prepare("SELECT hash, refs FROM org_chunks WHERE org = ?1 ORDER BY hash")
            .unwrap()
            .query_map([org], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap()
    };
    let counted = |data: &[u8]| -> Vec<(Vec<u8>, i64)> {
        let mut n = std::collections::BTreeMap::<Vec<u8>, i64>::new();
        for c in cut(data).0.chunks() {
            *n.entry(c.hash.to_vec()).or_default() += 1;
        }
        n.into_iter().collect()
    };
    let before_other = rows("other");
    f.store.remove(&fa.id, 200).unwrap();
    // What is left is exactly the second file's chunks, each counted as often as it occurs.
    assert_eq!(rows("acme"), counted(&b));
    f.store.remove(&fb.id, 200).unwrap();
    assert!(rows("acme").is_empty());
    // Another organisation's rows for the same chunks are untouched.
    assert_eq!(rows("other"), before_other);
    assert_eq!(rows("other"), counted(&a));
    assert_eq!(f.store.file(&other.id).unwrap(), Some(other));
}

#[test]
fn each_chunk_received_extends_the_uploads_lease_and_never_shortens_it() {
    let f = fixture();
    let data = noise(23, 2_000_000);
    let (m, bytes) = cut(&data);
    assert!(m.chunks().len() >= 2);
    let plan = f
        .store
        .begin_upload(&new("acme", "ann"), &m, NO_QUOTA, 100, LEASE)
        .unwrap();
    let receive = |i: usize, now: u64| {
        let c = m.chunks()[i];
        let chunk = VerifiedChunk::check(&c.hash, bytes[i].clone().into()).unwrap();
        let placed = f.store.write_chunk(&chunk).unwrap();
        f.store
            .chunk_received(&plan.id, Some(placed), &c.hash, c.len, false, now, LEASE)
            .unwrap();
    };
    // Leased until 3,700 from the start; the chunk at 3,000 moves that to 6,600.
    receive(0, 3000);
    assert_eq!(f.store.gc(5000, LEASE).unwrap().uploads_expired, 0);
    // A chunk stamped earlier (a clock set back) leaves the later end in place.
    receive(1, 2000);
    assert_eq!(f.store.gc(6500, LEASE).unwrap().uploads_expired, 0);
    assert_eq!(f.store.gc(6700, LEASE).unwrap().uploads_expired, 1);
}

#[test]
fn a_chunk_stored_meanwhile_by_another_upload_is_given_back() {
    let f = fixture();
    let data = noise(24, 2_000_000);
    let (m, bytes) = cut(&data);
    assert!(m.chunks().len() >= 2);
    let mine = f
        .store
        .begin_upload(&new("acme", "ann"), &m, NO_QUOTA, 100, LEASE)
        .unwrap();
    let theirs = f
        .store
        .begin_upload(&new("other", "eve"), &m, NO_QUOTA, 100, LEASE)
        .unwrap();
    // Read as a put reads it: the store does not hold the first chunk yet.
    assert!(!f.store.expected_chunk(&mine.id, 0).unwrap().unwrap().stored);
    let c = |i: usize| m.chunks()[i];
    let check = |i: usize| VerifiedChunk::check(&c(i).hash, bytes[i].clone().into()).unwrap();
    let receive = |id: &UploadId, i: usize| {
        let placed = f.store.write_chunk(&check(i)).unwrap();
        f.store
            .chunk_received(id, Some(placed), &c(i).hash, c(i).len, false, 100, LEASE)
            .unwrap();
    };
    // The other upload stores it first; this one then writes its own copy and records it.
    receive(&theirs.id, 0);
    assert!(f.store.expected_chunk(&mine.id, 0).unwrap().unwrap().stored);
    receive(&mine.id, 0);
    assert!(
        f.store
            .expected_chunk(&mine.id, 0)
            .unwrap()
            .unwrap()
            .received
    );
    assert_eq!(f.store.stored_bytes(), u64::from(c(0).len));
    // The second copy's room was given back: the next chunk lies right after the first.
    receive(&mine.id, 1);
    let (pack0, at0) = f.store.locate(&c(0).hash).unwrap().unwrap();
    let (pack1, at1) = f.store.locate(&c(1).hash).unwrap().unwrap();
    assert_eq!(pack0, pack1);
    assert_eq!(at1, at0 + u64::from(c(0).len).next_multiple_of(4096));
    for i in 2..m.chunks().len() {
        receive(&mine.id, i);
    }
    let file = f.store.commit(&mine.id, 101, true).unwrap();
    assert_eq!(read_all(&f.store, &file.id).unwrap(), data);
}

/// Chunks `range` of `m` as a manifest part.
fn part(m: &Manifest, range: std::ops::Range<usize>) -> Manifest {
    Manifest::new(m.chunks()[range].to_vec()).unwrap()
}

fn rejected<T: std::fmt::Debug>(r: Result<T>) -> String {
    match r {
        Err(StoreError::Rejected(m)) => m,
        other => panic!("expected a rejection, got {other:?}"),
    }
}

#[test]
fn a_manifest_sent_in_parts_makes_the_same_file() {
    let f = fixture();
    let data = noise(40, 12_000_000);
    let (m, bytes) = cut(&data);
    let n = m.chunks().len();
    assert!(n > 6);
    // The organisation holds the file's first three chunks already.
    let held = m.offsets()[3] as usize;
    upload(&f.store, "acme", &data[..held], 100);
    let size = m.size();
    let ann = new("acme", "ann");
    let plan = f
        .store
        .open_upload(&ann, size, &part(&m, 0..1), NO_QUOTA, 100, LEASE)
        .unwrap();
    assert!(!plan.resumed);
    assert!(plan.missing.is_empty(), "the first chunk is held");
    assert_eq!(plan.deduplicated_bytes, u64::from(m.chunks()[0].len));
    // The whole size is reserved from the start.
    assert_eq!(
        f.store.usage_of("acme", Some("ann"), 100).unwrap(),
        size + held as u64
    );
    assert!(rejected(f.store.commit(&plan.id, 100, true)).contains("manifest"));
    let second = f
        .store
        .list_upload(&plan.id, 1, &part(&m, 1..4), false, ann.reader, 100, LEASE)
        .unwrap();
    assert_eq!(second.missing, vec![3]);
    assert_eq!(
        second.deduplicated_bytes,
        u64::from(m.chunks()[1].len + m.chunks()[2].len)
    );
    // Out of order, or more bytes than declared: refused, and nothing of it kept.
    rejected(
        f.store
            .list_upload(&plan.id, 5, &part(&m, 5..n), true, ann.reader, 100, LEASE),
    );
    let mut over = m.chunks()[4..].to_vec();
    over.push(m.chunks()[0]);
    let over = Manifest::new(over).unwrap();
    assert!(
        rejected(
            f.store
                .list_upload(&plan.id, 4, &over, true, ann.reader, 100, LEASE)
        )
        .contains("declared")
    );
    rejected(f.store.list_upload(
        &plan.id,
        4,
        &part(&m, 4..n - 1),
        true,
        ann.reader,
        100,
        LEASE,
    ));
    let last = f
        .store
        .list_upload(&plan.id, 4, &part(&m, 4..n), true, ann.reader, 100, LEASE)
        .unwrap();
    assert_eq!(last.missing, (4..n as u32).collect::<Vec<_>>());
    rejected(f.store.list_upload(
        &plan.id,
        n as u32,
        &part(&m, 0..0),
        true,
        ann.reader,
        100,
        LEASE,
    ));
    let all = UploadPlan {
        missing: [second.missing, last.missing].concat(),
        ..plan
    };
    send(&f.store, &all, &m, &bytes, 100);
    let file = f.store.commit(&all.id, 101, true).unwrap();
    assert_eq!(file.root, *m.root());
    assert_eq!(file.size, size);
    assert_eq!(read_all(&f.store, &file.id).unwrap(), data);
}

#[test]
fn an_interrupted_put_in_parts_is_taken_over_by_the_next() {
    let f = fixture();
    let data = noise(41, 9_000_000);
    let (m, bytes) = cut(&data);
    let n = m.chunks().len();
    let size = m.size();
    let ann = new("acme", "ann");
    let first = f
        .store
        .open_upload(&ann, size, &part(&m, 0..1), NO_QUOTA, 100, LEASE)
        .unwrap();
    let more = f
        .store
        .list_upload(&first.id, 1, &part(&m, 1..3), false, ann.reader, 100, LEASE)
        .unwrap();
    send(&f.store, &first, &m, &bytes, 100);
    send(&f.store, &more, &m, &bytes, 100);
    // The put runs again, as the same user, on the same file: the same upload goes on under a
    // new id; the old id ends, and its reservation is not counted twice.
    let again = f
        .store
        .open_upload(&ann, size, &part(&m, 0..1), NO_QUOTA, 200, LEASE)
        .unwrap();
    assert!(again.resumed);
    assert_ne!(again.id, first.id);
    assert!(again.missing.is_empty());
    assert_eq!(f.store.upload(&first.id).unwrap(), None);
    rejected(f.store.commit(&again.id, 200, true));
    assert_eq!(f.store.usage_of("acme", None, 200).unwrap(), size);
    let relisted = f
        .store
        .list_upload(&again.id, 1, &part(&m, 1..3), false, ann.reader, 200, LEASE)
        .unwrap();
    assert!(relisted.missing.is_empty(), "what arrived stays received");
    let rest = f
        .store
        .list_upload(&again.id, 3, &part(&m, 3..n), true, ann.reader, 200, LEASE)
        .unwrap();
    assert_eq!(rest.missing, (3..n as u32).collect::<Vec<_>>());
    // Once its manifest is whole, a put that sends the manifest at once continues it too.
    let whole = f
        .store
        .begin_upload(&ann, &m, NO_QUOTA, 201, LEASE)
        .unwrap();
    assert!(whole.resumed);
    assert_eq!(whole.id, again.id);
    assert_eq!(whole.missing, rest.missing);
    // Another user's put of the same file, or the same user's of another file, takes nothing.
    let bob = f
        .store
        .open_upload(
            &new("acme", "bob"),
            size,
            &part(&m, 0..1),
            NO_QUOTA,
            201,
            LEASE,
        )
        .unwrap();
    assert!(!bob.resumed);
    let other = Manifest::new(vec![m.chunks()[1]]).unwrap();
    let other = f
        .store
        .open_upload(&ann, size, &other, NO_QUOTA, 201, LEASE)
        .unwrap();
    assert!(!other.resumed);
    assert!(f.store.upload(&again.id).unwrap().is_some());
    send(&f.store, &whole, &m, &bytes, 202);
    let file = f.store.commit(&again.id, 202, true).unwrap();
    assert_eq!(read_all(&f.store, &file.id).unwrap(), data);
}

#[test]
fn a_put_of_the_file_edited_since_takes_over_and_replaces_what_changed() {
    let f = fixture();
    let data = noise(42, 6_000_000);
    let (m, bytes) = cut(&data);
    let n = m.chunks().len();
    let mut edited = data.clone();
    edited[3_000_000..3_001_000].fill(7);
    let (e, ebytes) = cut(&edited);
    assert_eq!(e.chunks()[0], m.chunks()[0]);
    let ann = new("acme", "ann");
    let plan = f
        .store
        .open_upload(&ann, m.size(), &part(&m, 0..n), NO_QUOTA, 100, LEASE)
        .unwrap();
    send(&f.store, &plan, &m, &bytes, 100);
    // The same name, size and first chunk: the put of the edited file takes the upload over,
    // and only the chunks that changed travel.
    let again = f
        .store
        .open_upload(&ann, e.size(), &part(&e, 0..1), NO_QUOTA, 101, LEASE)
        .unwrap();
    assert!(again.resumed);
    let rest = f
        .store
        .list_upload(
            &again.id,
            1,
            &part(&e, 1..e.chunks().len()),
            true,
            ann.reader,
            101,
            LEASE,
        )
        .unwrap();
    let changed: Vec<u32> = (0..e.chunks().len())
        .filter(|&i| !m.chunks().contains(&e.chunks()[i]))
        .map(|i| i as u32)
        .collect();
    assert!(!changed.is_empty());
    assert_eq!(rest.missing, changed);
    let ours = UploadPlan {
        missing: rest.missing,
        ..again
    };
    send(&f.store, &ours, &e, &ebytes, 101);
    let file = f.store.commit(&ours.id, 102, true).unwrap();
    assert_eq!(file.root, *e.root());
    assert_eq!(read_all(&f.store, &file.id).unwrap(), edited);
}

#[test]
fn places_listed_before_a_take_over_do_not_count_against_the_size() {
    let f = fixture();
    let mib = 1u32 << 20;
    let chunk = |seed: u8, len: u32| ChunkRef {
        hash: [seed; 32],
        len,
    };
    let ann = new("acme", "ann");
    let size = 4 * u64::from(mib);
    let first = Manifest::new(vec![chunk(0, mib)]).unwrap();
    let plan = f
        .store
        .open_upload(&ann, size, &first, NO_QUOTA, 100, LEASE)
        .unwrap();
    let old = Manifest::new(vec![chunk(1, mib), chunk(2, mib), chunk(3, mib)]).unwrap();
    f.store
        .list_upload(&plan.id, 1, &old, false, ann.reader, 100, LEASE)
        .unwrap();
    // Run again on the file as it is now: its second chunk grew, the ones after it moved.
    let again = f
        .store
        .open_upload(&ann, size, &first, NO_QUOTA, 101, LEASE)
        .unwrap();
    assert!(again.resumed);
    let grown = Manifest::new(vec![chunk(4, 2 * mib)]).unwrap();
    f.store
        .list_upload(&again.id, 1, &grown, false, ann.reader, 101, LEASE)
        .unwrap();
    let end = Manifest::new(vec![chunk(5, mib)]).unwrap();
    let done = f
        .store
        .list_upload(&again.id, 2, &end, true, ann.reader, 101, LEASE)
        .unwrap();
    assert_eq!(done.missing, vec![2]);
    // The place listed before past the end is gone.
    let listed: i64 = f
        .store
        .db()
        .query_row(
            "SELECT COUNT(*) FROM upload_chunks WHERE upload = ?1",
            [&again.id[..]],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(listed, 3);
}

#[test]
fn sizes_past_what_a_manifest_can_hold_are_refused() {
    let f = fixture();
    let first = Manifest::new(vec![ChunkRef {
        hash: [1; 32],
        len: 1,
    }])
    .unwrap();
    let m =
        rejected(
            f.store
                .open_upload(&new("acme", "ann"), u64::MAX, &first, NO_QUOTA, 100, LEASE),
        );
    assert!(m.contains("at most"), "{m}");
    // Nothing was reserved.
    assert_eq!(f.store.usage_of("acme", None, 100).unwrap(), 0);
}

#[test]
fn a_file_takes_the_root_of_its_chunks_when_another_upload_holds_that_root() {
    let f = fixture();
    let data = noise(44, 3_000_000);
    let (m, bytes) = cut(&data);
    let ann = new("acme", "ann");
    // The same content, unfinished, under another name.
    let whole = f
        .store
        .begin_upload(
            &NewUpload {
                name: "a.bin",
                ..ann.clone()
            },
            &m,
            NO_QUOTA,
            100,
            LEASE,
        )
        .unwrap();
    let n = m.chunks().len();
    let plan = f
        .store
        .open_upload(&ann, m.size(), &part(&m, 0..n), NO_QUOTA, 100, LEASE)
        .unwrap();
    assert_ne!(plan.id, whole.id);
    let rest = f
        .store
        .list_upload(
            &plan.id,
            n as u32,
            &part(&m, 0..0),
            true,
            ann.reader,
            100,
            LEASE,
        )
        .unwrap();
    assert!(rest.missing.is_empty());
    send(&f.store, &plan, &m, &bytes, 100);
    let file = f.store.commit(&plan.id, 101, true).unwrap();
    assert_eq!(file.root, *m.root());
    let stored: Vec<u8> = f
        .store
        .db()
        .query_row("SELECT root FROM files WHERE id = ?1", [&file.id], |r| {
            r.get(0)
        })
        .unwrap();
    assert_eq!(stored, m.root().to_vec());
}

#[test]
fn a_chunk_listed_again_in_a_later_part_travels_once() {
    let f = fixture();
    let data = noise(43, 5_000_000);
    let (m, bytes) = cut(&data);
    let c = m.chunks();
    assert!(c.len() >= 3);
    // A file whose chunks are 0, 1, then 1 and 2 again (as a file that repeats itself).
    let parts = [vec![c[0], c[1]], vec![c[1], c[2]]];
    let size: u64 = parts.iter().flatten().map(|c| u64::from(c.len)).sum();
    let whole = Manifest::new(parts.concat()).unwrap();
    let ann = new("acme", "ann");
    let first_part = Manifest::new(parts[0].clone()).unwrap();
    let plan = f
        .store
        .open_upload(&ann, size, &first_part, NO_QUOTA, 100, LEASE)
        .unwrap();
    assert_eq!(plan.missing, vec![0, 1]);
    let second_part = Manifest::new(parts[1].clone()).unwrap();
    let rest = f
        .store
        .list_upload(&plan.id, 2, &second_part, true, ann.reader, 100, LEASE)
        .unwrap();
    assert_eq!(rest.missing, vec![3], "chunk 1 is on its way already");
    let blobs = [
        bytes[0].clone(),
        bytes[1].clone(),
        bytes[1].clone(),
        bytes[2].clone(),
    ];
    let all = UploadPlan {
        missing: vec![0, 1, 3],
        ..plan
    };
    send(&f.store, &all, &whole, &blobs, 100);
    let file = f.store.commit(&all.id, 101, true).unwrap();
    assert_eq!(file.root, *whole.root());
    assert_eq!(read_all(&f.store, &file.id).unwrap(), blobs.concat());
}

#[test]
fn a_chunk_received_at_one_place_counts_at_its_later_places_whatever_the_reader() {
    let f = fixture();
    let data = noise(45, 5_000_000);
    let (m, bytes) = cut(&data);
    let c = m.chunks();
    // A view-only file put from a browser: its own chunks are not "held" for that reader.
    let browser = NewUpload {
        view_only: true,
        reader: Reader {
            clearance: 3,
            room: None,
            view_only: false,
        },
        ..new("acme", "ann")
    };
    let parts = [vec![c[0], c[1]], vec![c[1], c[2]]];
    let size: u64 = parts.iter().flatten().map(|c| u64::from(c.len)).sum();
    let whole = Manifest::new(parts.concat()).unwrap();
    let plan = f
        .store
        .open_upload(
            &browser,
            size,
            &Manifest::new(parts[0].clone()).unwrap(),
            NO_QUOTA,
            100,
            LEASE,
        )
        .unwrap();
    let blobs = [
        bytes[0].clone(),
        bytes[1].clone(),
        bytes[1].clone(),
        bytes[2].clone(),
    ];
    send(&f.store, &plan, &whole, &blobs, 100);
    let rest = f
        .store
        .list_upload(
            &plan.id,
            2,
            &Manifest::new(parts[1].clone()).unwrap(),
            true,
            browser.reader,
            100,
            LEASE,
        )
        .unwrap();
    assert_eq!(rest.missing, vec![3]);
    let all = UploadPlan {
        missing: rest.missing,
        ..plan
    };
    send(&f.store, &all, &whole, &blobs, 100);
    let file = f.store.commit(&all.id, 101, true).unwrap();
    assert_eq!(read_all(&f.store, &file.id).unwrap(), blobs.concat());
}

/// What keeping a chunk of `len` bytes in a region of its own is charged.
fn charge(len: usize) -> usize {
    len.next_multiple_of(crate::files::DIRECT_ALIGN) + recent::ENTRY
}

/// What keeping `chunks` in memory, each in a region of its own, is charged.
fn charge_of(chunks: &[ChunkRef]) -> usize {
    chunks.iter().map(|c| charge(c.len as usize)).sum()
}

/// A new store that keeps up to `budget` bytes of recent chunks.
fn keeping(budget: usize) -> (tempfile::TempDir, ChunkStore) {
    let dir = tempfile::tempdir().unwrap();
    let mut store = ChunkStore::open(dir.path()).unwrap();
    store.keep_recent(budget);
    (dir, store)
}

#[test]
fn chunks_that_arrived_in_the_pool_are_kept_as_written() {
    let data = noise(47, 6_000_000);
    let (m, bytes) = cut(&data);
    let n = m.chunks().len();
    assert!(n >= 3);
    let whole = charge_of(m.chunks());
    let (_dir, store) = keeping(whole);
    let pool = store.pool().expect("memory reserved").clone();
    assert!(pool.size() >= whole);
    let in_pool = |b: &[u8]| {
        let mut buf = pool.take(b.len()).unwrap();
        buf.extend_from_slice(b);
        Bytes::from_owner(buf)
    };
    let plan = store
        .begin_upload(&new("acme", "ann"), &m, NO_QUOTA, 100, LEASE)
        .unwrap();
    // The first chunk arrives on the heap: kept only once read twice, as before.
    let first = UploadPlan {
        missing: vec![0],
        ..plan.clone()
    };
    send_as(
        &store,
        &first,
        &m,
        &bytes,
        100,
        &|_| false,
        &Bytes::copy_from_slice,
    );
    let rest = UploadPlan {
        missing: plan.missing[1..].to_vec(),
        ..plan
    };
    send_as(&store, &rest, &m, &bytes, 100, &|_| false, &in_pool);
    let rec = store.commit(&rest.id, 101, true).unwrap();
    let kept = charge_of(&m.chunks()[1..]);
    assert_eq!(store.recent_reads(), (0, kept));
    // The first read finds all but the heap's chunk in memory, and reads that one from disk.
    assert_eq!(read_all(&store, &rec.id).unwrap(), data);
    assert_eq!(store.recent_reads(), ((n - 1) as u64, kept));
    // Regions come back to the pool as kept chunks go.
    store.remove(&rec.id, 200).unwrap();
    store.gc(200 + 7200, Duration::from_secs(3600)).unwrap();
    assert_eq!(store.recent_reads().1, 0);
    assert_eq!(pool.in_use(), 0);
}

#[test]
fn a_kept_chunk_that_holds_the_pool_back_is_let_go() {
    let (_dir, store) = keeping(1 << 20);
    let pool = store.pool().unwrap().clone();
    let bytes = noise(48, 100_000);
    let hash = chunk_hash(&bytes);
    let (in_pool, _) = pool.copy(&bytes).unwrap();
    store
        .write_chunk(&VerifiedChunk::check(&hash, in_pool).unwrap())
        .unwrap()
        .keep();
    assert_eq!(store.recent_reads().1, charge(bytes.len()));
    // A transfer takes most of the rest, then ends: its memory lies after the kept chunk's, so
    // the pool cannot hand it out again while the chunk is kept.
    let held = pool.take(pool.size() - POOL_ROOM).unwrap();
    drop(held);
    assert!(pool.room() < POOL_ROOM);
    // The next chunk written, wherever its bytes are, lets the kept chunk go.
    let other = noise(49, 100_000);
    store.write_chunk(&piece(&other)).unwrap().keep();
    assert_eq!(store.recent_reads().1, 0);
    assert_eq!(pool.room(), pool.size());
}

#[test]
fn chunks_read_twice_are_kept_in_memory_within_the_budget() {
    let data = noise(46, 6_000_000);
    let (m, _) = cut(&data);
    let n = m.chunks().len();
    assert!(n >= 3);
    let largest = m.chunks().iter().map(|c| c.len as usize).max().unwrap();
    // Room for the whole file: stored, then read once, nothing is kept; read again, all is.
    let whole = charge_of(m.chunks());
    let (_dir, store) = keeping(whole);
    let (_, rec) = upload(&store, "acme", &data, 100);
    assert_eq!(read_all(&store, &rec.id).unwrap(), data);
    assert_eq!(store.recent_reads(), (0, 0));
    assert_eq!(read_all(&store, &rec.id).unwrap(), data);
    assert_eq!(store.recent_reads(), (0, whole));
    assert_eq!(read_all(&store, &rec.id).unwrap(), data);
    assert_eq!(store.recent_reads(), (n as u64, whole));
    // A chunk damaged on disk but kept in memory is served intact.
    let c = m.chunks()[1];
    let at = m.offsets()[1] as usize;
    let mut bytes = data[at..at + c.len as usize].to_vec();
    bytes[10] ^= 1;
    overwrite(&store, &c.hash, &bytes);
    assert_eq!(
        store.read_chunk(&c.hash, c.len).unwrap(),
        data[at..at + c.len as usize]
    );
    assert_eq!(store.corrupt_reads(), 0);
    // A copy in memory that no longer matches its seal is let go, and the disk read instead.
    let c0 = m.chunks()[0];
    let good = store.read_chunk(&c0.hash, c0.len).unwrap();
    store.recent.forget(&c0.hash);
    let seal = chunk_seal(&c0.hash, &good);
    let mut bad = good.to_vec();
    bad[5] ^= 1;
    let bad = Bytes::from(bad);
    store.recent.keep(&c0.hash, bad.clone(), seal, bad.len());
    assert_eq!(store.recent.get(&c0.hash).unwrap().data, bad);
    assert_eq!(store.read_chunk(&c0.hash, c0.len).unwrap(), good);
    assert!(store.recent.get(&c0.hash).is_none_or(|k| k.data == good));
    // Collected chunks leave memory.
    store.remove(&rec.id, 200).unwrap();
    store.gc(200 + 7200, Duration::from_secs(3600)).unwrap();
    assert_eq!(store.recent_reads().1, 0);
    // Room for the largest chunk: what is kept stays within it, the oldest going first.
    let largest = charge(largest);
    let (_dir, store) = keeping(largest);
    let (_, rec) = upload(&store, "acme", &data, 100);
    for _ in 0..3 {
        assert_eq!(read_all(&store, &rec.id).unwrap(), data);
        assert!(store.recent_reads().1 <= largest);
    }
    let last = m.chunks()[n - 1];
    let reads = store.recent_reads().0;
    store.read_chunk(&last.hash, last.len).unwrap();
    assert_eq!(
        store.recent_reads().0,
        reads + 1,
        "the last chunk read is kept"
    );
}
