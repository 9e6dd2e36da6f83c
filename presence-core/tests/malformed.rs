//! Any frame, however broken, decodes to a message or a typed error; never a
//! panic. Fed with random bytes, truncations and mutations of the golden vectors.

use presence_core::limits::MAX_FRAME_BYTES;
use presence_core::protocol::{ErrorCode, decode_client, decode_server};
use proptest::prelude::*;

fn vector_texts() -> Vec<String> {
    let all: serde_json::Value = serde_json::from_str(include_str!("../vectors/v1.json")).unwrap();
    ["client", "server"]
        .iter()
        .flat_map(|side| all[*side].as_array().unwrap().clone())
        .map(|v| v["json"].to_string())
        .collect()
}

#[test]
fn every_truncation_of_every_vector_is_a_typed_error() {
    for text in vector_texts() {
        for cut in 0..text.len() {
            if !text.is_char_boundary(cut) {
                continue;
            }
            let err = decode_client(&text[..cut]).unwrap_err();
            assert_eq!(err.code, ErrorCode::Malformed, "{:?}", &text[..cut]);
            assert!(decode_server(&text[..cut]).is_err());
        }
    }
}

#[test]
fn hostile_shapes_get_errors() {
    let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
    for text in [
        deep.as_str(),
        "null",
        "\"hello\"",
        "{\"type\":\"hello\",\"v\":-1}",
        "{\"type\":\"hello\",\"v\":1e99}",
        "{\"type\":\"watch\",\"users\":\"bob\"}",
        "{\"type\":\"status\",\"status\":\"busy\",\"text\":\"\"}",
        "{\"type\":\"status\",\"status\":\"sleeping\"}",
        "{\"type\":\"activity\",\"state\":\"idle\"}",
        "{\"type\":\"read\",\"room\":\"r\",\"marker\":-1}",
        "{\"type\":\"join\",\"room\":\"a\\u0000b\"}",
        "{\"type\":\"join\",\"room\":\"x\",\"type\":\"leave\"}",
    ] {
        assert!(decode_client(text).is_err(), "{text:?} must be refused");
    }
    let many = format!(
        "{{\"type\":\"watch\",\"users\":[{}]}}",
        vec!["\"u\""; 201].join(",")
    );
    assert!(many.len() <= MAX_FRAME_BYTES);
    assert_eq!(
        decode_client(&many).unwrap_err().code,
        ErrorCode::InvalidField
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2_000))]

    #[test]
    fn random_text_never_panics(s in "\\PC{0,300}") {
        let _ = decode_client(&s);
        let _ = decode_server(&s);
    }

    #[test]
    fn mutated_vectors_never_panic(i in any::<prop::sample::Index>(), at in any::<prop::sample::Index>(), byte in any::<u8>()) {
        let texts = vector_texts();
        let mut bytes = texts[i.index(texts.len())].clone().into_bytes();
        let at = at.index(bytes.len());
        bytes[at] = byte;
        if let Ok(s) = String::from_utf8(bytes) {
            let _ = decode_client(&s);
            let _ = decode_server(&s);
        }
    }
}
