//! Any bytes, cut anywhere, in any framing: the decoder never panics and never holds a message
//! beyond its limit.
#![no_main]

use bytes::Bytes;
use ksql_lake::ksqldb::{FrameDecoder, Framing};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&selector, body)) = data.split_first() else { return };
    let framing = match selector % 3 {
        0 => Framing::Delimited,
        1 => Framing::StreamedRow,
        _ => Framing::JsonArray,
    };
    let mut decoder = FrameDecoder::new(framing);
    decoder.set_max_message_bytes(1024);
    let step = usize::from(selector / 3).max(1);
    for chunk in body.chunks(step) {
        decoder.push(Bytes::copy_from_slice(chunk));
        for _ in 0..10_000 {
            match decoder.next_event() {
                Ok(None) => break,
                Ok(Some(_)) => {}
                Err(_) if framing == Framing::JsonArray => break,
                Err(_) => {}
            }
        }
    }
    for _ in 0..10_000 {
        if !matches!(decoder.finish(), Ok(Some(_)) | Err(_)) || framing == Framing::JsonArray {
            break;
        }
    }
});
