//! Join tokens: the token file parser and a presented token against it.
//! Input: a token text, a newline, then the file's text. The file either
//! parses and round-trips through `to_json`, or is an error; checking and
//! redeeming any token never panics, and a redeemed token took exactly one
//! use of a record that admitted it.
#![no_main]

use libfuzzer_sys::fuzz_target;
use relay_user::core::join::{Tokens, parse_token};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (token, file) = text.split_once('\n').unwrap_or((text, ""));
    let _ = parse_token(token);
    let Ok(mut tokens) = Tokens::from_json(file) else {
        return;
    };
    let json = tokens.to_json();
    let again = Tokens::from_json(&json).expect("to_json output parses");
    assert_eq!(again, tokens, "round trip");
    let now = 1_800_000_000;
    let admitted = tokens.check(token, now).map(|r| (r.id.clone(), r.uses)).ok();
    match tokens.redeem(token, "fuzz", now) {
        Ok(rec) => {
            let (id, uses) = admitted.expect("redeemed a token check refused");
            assert_eq!((rec.id, rec.uses), (id, uses + 1), "one use taken");
        }
        Err(_) => assert!(admitted.is_none(), "check admitted, redeem refused"),
    }
});
