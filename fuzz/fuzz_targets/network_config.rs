//! `NetworkConfig::from_json` on arbitrary bytes: never a panic; accepted configs are valid.
#![no_main]

use libfuzzer_sys::fuzz_target;
use weft_config::NetworkConfig;

fuzz_target!(|data: &[u8]| {
    match NetworkConfig::from_json("/weft/v1/default/config", data) {
        Ok(c) => {
            assert_eq!(c.cidr.network(), c.cidr.addr());
            assert!(c.subnet_len > c.cidr.prefix_len() && (8..=30).contains(&c.subnet_len));
            assert_eq!(NetworkConfig::from_json("k", c.to_json().as_bytes()).expect("own output parses"), c);
        }
        Err(e) => assert!(!e.to_string().contains('\n')),
    }
});
