//! Just enough STUN to route a first datagram from a new address to its session.
//!
//! Job: a binding request's USERNAME is `"<our ufrag>:<their ufrag>"` (RFC 8445 7.2.2), so the
//! part before the colon names the session the request is for. Everything else about STUN
//! (integrity, fingerprint, responses) is str0m's job once the datagram reaches that session.
//!
//! Invariants: never panics, never allocates, bounded work on any input.

const MAGIC_COOKIE: [u8; 4] = [0x21, 0x12, 0xa4, 0x42];
const USERNAME: u16 = 0x0006;
const HEADER_LEN: usize = 20;

/// The local (our) ICE ufrag named by a STUN message's USERNAME, if `data` is a STUN message
/// that carries one.
pub fn local_ufrag(data: &[u8]) -> Option<&str> {
    // STUN: first two bits zero, magic cookie at bytes 4..8 (RFC 5389 6).
    if data.len() < HEADER_LEN || data[0] & 0xc0 != 0 || data[4..8] != MAGIC_COOKIE {
        return None;
    }
    let body_len = usize::from(u16::from_be_bytes([data[2], data[3]]));
    let body = data.get(HEADER_LEN..HEADER_LEN + body_len)?;
    let mut rest = body;
    while rest.len() >= 4 {
        let kind = u16::from_be_bytes([rest[0], rest[1]]);
        let len = usize::from(u16::from_be_bytes([rest[2], rest[3]]));
        let value = rest.get(4..4 + len)?;
        if kind == USERNAME {
            let user = std::str::from_utf8(value).ok()?;
            let (local, _) = user.split_once(':')?;
            return (!local.is_empty()).then_some(local);
        }
        // Attributes are padded to a multiple of four bytes.
        let padded = (len + 3) & !3;
        rest = rest.get(4 + padded..)?;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn binding(attrs: &[(u16, &[u8])]) -> Vec<u8> {
        let mut body = Vec::new();
        for (kind, value) in attrs {
            body.extend_from_slice(&kind.to_be_bytes());
            body.extend_from_slice(&(value.len() as u16).to_be_bytes());
            body.extend_from_slice(value);
            while body.len() % 4 != 0 {
                body.push(0);
            }
        }
        let mut m = vec![0x00, 0x01];
        m.extend_from_slice(&(body.len() as u16).to_be_bytes());
        m.extend_from_slice(&MAGIC_COOKIE);
        m.extend_from_slice(&[7; 12]);
        m.extend_from_slice(&body);
        m
    }

    #[test]
    fn finds_username_after_other_attributes() {
        let m = binding(&[
            (0x0024, &[1, 2, 3, 4]),
            (0x8022, b"abc"),
            (USERNAME, b"srv1:cli9"),
        ]);
        assert_eq!(local_ufrag(&m), Some("srv1"));
    }

    #[test]
    fn rejects_non_stun_and_malformed() {
        assert_eq!(local_ufrag(&binding(&[(0x0024, &[1, 2, 3, 4])])), None);
        assert_eq!(local_ufrag(&binding(&[(USERNAME, b"nocolon")])), None);
        assert_eq!(local_ufrag(&binding(&[(USERNAME, b":x")])), None);
        // RTP (version 2) and DTLS (content type 22) are not STUN.
        let mut rtp = binding(&[(USERNAME, b"a:b")]);
        rtp[0] = 0x80;
        assert_eq!(local_ufrag(&rtp), None);
        // Length fields past the end.
        let mut m = binding(&[(USERNAME, b"a:b")]);
        m[2] = 0xff;
        assert_eq!(local_ufrag(&m), None);
        let mut m = binding(&[(USERNAME, b"a:b")]);
        m[23] = 0xff;
        assert_eq!(local_ufrag(&m), None);
        for len in 0..m.len() {
            let _ = local_ufrag(&m[..len]);
        }
    }
}
