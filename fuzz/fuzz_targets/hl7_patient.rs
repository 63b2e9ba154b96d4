//! Arbitrary messages through what attribution reads: PID identifiers and demographics,
//! PD1-4 and ROL-4 providers. No panic; what comes out is well-formed.
#![no_main]
use adt_router::hl7::charset;
use adt_router::hl7::patient::read_patient;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok((text, _cs)) = charset::decode(data, encoding_rs::WINDOWS_1252) else { return };
    if let Ok(p) = read_patient(&text) {
        for d in [&p.birth_date, &p.event_date].into_iter().flatten() {
            // YYYY-MM-DD, a real calendar date.
            assert_eq!(d.len(), 10, "{d}");
            assert_eq!(&d[4..5], "-");
        }
        assert!(p.identifiers.iter().all(|i| !i.id.is_empty()));
        assert!(p
            .providers
            .iter()
            .all(|x| !x.id.is_empty() && x.segment_index >= 2 && (x.field == "PD1-4" || x.field == "ROL-4")));
    }
});
