//! Arbitrary frame payloads through the ingest path's pure part: charset decoding, the
//! MSH and routing-field parse, and an ACK for every disposition. No panic, and every
//! ACK is a well-formed MSH + MSA that echoes what it can.
#![no_main]
use adt_router::hl7::ack::{ack_code, build_ack, AcceptAck, AckEcho};
use adt_router::hl7::{charset, parse_message, Disposition, ParseRules};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let rules = ParseRules::default();
    let Ok((text, _cs)) = charset::decode(data, encoding_rs::WINDOWS_1252) else { return };
    let parsed = parse_message(&text, &rules);
    let echo = AckEcho::recover(&text);
    let errors = match &parsed {
        Ok(p) => p.problems.clone(),
        Err(r) => vec![r.err.clone()],
    };
    for d in [Disposition::Accepted, Disposition::ContentError, Disposition::Rejected, Disposition::NotStored] {
        if let Some(code) = ack_code(echo.mode, d, AcceptAck::Always) {
            let ack = build_ack(&echo, code, &errors, "K1", "20260101000000+0000");
            assert!(ack.starts_with("MSH"));
            let segs: Vec<&str> = ack.split('\r').filter(|s| !s.is_empty()).collect();
            assert!(segs.len() >= 2 && segs[1].starts_with("MSA"), "{ack:?}");
            // Our own text never breaks the segment structure.
            assert!(segs.iter().all(|s| s.starts_with("MSH") || s.starts_with("MSA") || s.starts_with("ERR")), "{ack:?}");
        }
    }
    if let Ok(p) = parsed {
        assert!(!p.header.control_id.as_str().is_empty());
        assert!(p.header.version.starts_with("2."));
    }
});
