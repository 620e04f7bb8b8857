//! The answer as every peer reads it: our ICE candidates in each bundled media section.
//!
//! str0m writes the candidates into the first media section only, as BUNDLE allows (RFC 8843:
//! transport attributes belong to the BUNDLE-tag section). Some stacks read a bundled
//! transport's candidates from another section: aiortc takes them from the last section it had
//! given that transport in its offer, so a WHEP offer with two video transceivers (one transport
//! for both) found no candidate and never left ICE `checking`. Repeating the same candidates in
//! every accepted section, each closed by `a=end-of-candidates` (all of ours are known when we
//! answer: they are host candidates), is read the same way by the stacks that look only at the
//! first section.

/// Copies the candidate lines of `sdp` into every accepted media section that has none, and
/// ends each accepted section's candidates with `a=end-of-candidates`. An answer without
/// candidates is returned as it is.
pub fn candidates_in_every_section(sdp: &str) -> String {
    let lines: Vec<&str> = sdp.split("\r\n").filter(|l| !l.is_empty()).collect();
    let candidates: Vec<&str> = lines
        .iter()
        .copied()
        .filter(|l| l.starts_with("a=candidate:"))
        .fold(Vec::new(), |mut seen, l| {
            if !seen.contains(&l) {
                seen.push(l);
            }
            seen
        });
    if candidates.is_empty() {
        return sdp.to_string();
    }
    let mut out = String::with_capacity(sdp.len() * 2);
    let mut section: Option<Section> = None;
    for line in lines {
        if line.starts_with("m=") {
            close(&mut out, section.take(), &candidates);
            section = Some(Section {
                accepted: line.split(' ').nth(1) != Some("0"),
                has_candidates: false,
            });
        }
        if line == "a=end-of-candidates" {
            continue;
        }
        if line.starts_with("a=candidate:")
            && let Some(s) = section.as_mut()
        {
            s.has_candidates = true;
        }
        out.push_str(line);
        out.push_str("\r\n");
    }
    close(&mut out, section, &candidates);
    out
}

struct Section {
    accepted: bool,
    has_candidates: bool,
}

fn close(out: &mut String, section: Option<Section>, candidates: &[&str]) {
    let Some(s) = section else { return };
    if !s.accepted {
        return;
    }
    if !s.has_candidates {
        for c in candidates {
            out.push_str(c);
            out.push_str("\r\n");
        }
    }
    out.push_str("a=end-of-candidates\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    const ANSWER: &str = "v=0\r\no=- 1 2 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\n\
        a=group:BUNDLE 0 1 2\r\n\
        m=video 9 UDP/TLS/RTP/SAVPF 96\r\na=mid:0\r\n\
        a=candidate:1 1 udp 2130706175 127.0.0.1 40000 typ host\r\na=ice-ufrag:u\r\n\
        m=video 9 UDP/TLS/RTP/SAVPF 96\r\na=mid:1\r\na=ice-ufrag:u\r\n\
        m=audio 0 UDP/TLS/RTP/SAVPF 111\r\na=mid:2\r\n";

    fn sections(sdp: &str) -> Vec<String> {
        sdp.split("m=").skip(1).map(str::to_string).collect()
    }

    #[test]
    fn every_accepted_section_gets_the_candidates_once_and_an_end() {
        let out = candidates_in_every_section(ANSWER);
        let s = sections(&out);
        assert_eq!(s.len(), 3);
        for accepted in &s[..2] {
            assert_eq!(
                accepted.matches("a=candidate:1 1 udp").count(),
                1,
                "{accepted}"
            );
            assert_eq!(
                accepted.matches("a=end-of-candidates").count(),
                1,
                "{accepted}"
            );
            assert!(accepted.ends_with("a=end-of-candidates\r\n"), "{accepted}");
        }
        // A rejected section (port 0) stays without transport.
        assert!(!s[2].contains("candidate"), "{}", s[2]);
        // The session part and every other line are kept in order.
        assert!(out.starts_with("v=0\r\no=- 1 2 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\n"));
        assert_eq!(out.matches("a=ice-ufrag:u").count(), 2);
    }

    #[test]
    fn applying_it_twice_changes_nothing_more() {
        let once = candidates_in_every_section(ANSWER);
        assert_eq!(candidates_in_every_section(&once), once);
    }

    #[test]
    fn an_answer_without_candidates_is_left_alone() {
        let bare = "v=0\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\na=mid:0\r\n";
        assert_eq!(candidates_in_every_section(bare), bare);
    }
}
