//! `NetworkConfig::from_json` on arbitrary bytes: never a panic; accepted configs are valid
//! (each pool of its family, aligned, with a subnet length that fits).
#![no_main]

use libfuzzer_sys::fuzz_target;
use weft_config::subnet::Family;
use weft_config::NetworkConfig;

fuzz_target!(|data: &[u8]| {
    match NetworkConfig::from_json("/weft/v1/default/config", data) {
        Ok(c) => {
            for (family, p) in c.pools().iter() {
                assert_eq!(Family::of_net(p.cidr), family);
                assert_eq!(p.cidr.network(), p.cidr.addr());
                let max = family.bits() - 2;
                assert!(p.subnet_len > p.cidr.prefix_len() && (8..=max).contains(&p.subnet_len));
            }
            assert_eq!(NetworkConfig::from_json("k", c.to_json().as_bytes()).expect("own output parses"), c);
        }
        Err(e) => assert!(!e.to_string().contains('\n')),
    }
});
