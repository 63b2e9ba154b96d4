//! Arbitrary bytes, in arbitrary chunks, through the MLLP frame decoder: no panic, no
//! frame over the cap, no unbounded buffering.
#![no_main]
use adt_router::mllp::codec::FrameDecoder;
use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;

const CAP: usize = 4096;

fuzz_target!(|data: &[u8]| {
    let Some((&chunk, rest)) = data.split_first() else { return };
    let chunk = (chunk as usize % 64) + 1;
    let mut dec = FrameDecoder::new(CAP);
    let mut buf = BytesMut::new();
    for piece in rest.chunks(chunk) {
        buf.extend_from_slice(piece);
        loop {
            match dec.decode(&mut buf) {
                Ok(Some(frame)) => assert!(frame.len() <= CAP),
                Ok(None) => break,
                Err(_) => return,
            }
        }
        assert!(buf.len() <= CAP + chunk + 1, "buffered {} bytes", buf.len());
    }
    dec.finish(&buf);
});
