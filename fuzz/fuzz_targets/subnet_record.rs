//! `SubnetRecord::from_json` on arbitrary bytes: never a panic, errors on one line, accepted
//! records valid and stable through their own JSON.
#![no_main]

use libfuzzer_sys::fuzz_target;
use weft_config::SubnetRecord;

fuzz_target!(|data: &[u8]| {
    match SubnetRecord::from_json("/weft/v1/default/subnets/10.244.1.0-24", data) {
        Ok(r) => {
            assert!(weft_config::agent::valid_name(&r.node) && !r.node_id.is_empty() && r.schema >= 1);
            let again = SubnetRecord::from_json("k", r.to_json().as_bytes()).expect("own output parses");
            assert_eq!(again, r);
        }
        Err(e) => assert!(!e.to_string().contains('\n')),
    }
});
