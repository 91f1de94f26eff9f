//! Reliability (issue 5) on the lab: agent restarts, etcd outages and member loss, races for
//! subnets, exhaustion, stale and damaged state, hostile etcd records, broken config and CLI
//! input, property tests over the untrusted-input parsers, and underlay changes. Every lab test
//! builds its own lab (ids r1..r9) and the lab's Drop removes it, also on failure. Results are
//! printed as `measured:` lines (run with `--nocapture`) and recorded in docs/RELIABILITY.md.
//!
//! `WEFT_FULL=1` runs the long variants (a 30 s etcd outage instead of 10 s, 20 race rounds
//! instead of 3); `WEFT_FUZZ_CASES=N` sets the property-test case count (default 2000).
//!
//! Run: `cargo build --workspace --bins && cargo test -p weft-tests --test reliability --
//! --test-threads=1 --nocapture` (as root; the r7 and r8 tests need no root).
//!
//! Layout (modules in `reliability/`): `common` (status, streams and their loss report, etcd
//! from the test), then one module per group of scenarios: `outages` (1-3: agent restarts, etcd
//! outage, etcd member loss), `subnets` (4: races and exhaustion), `state` (5-6: stale state,
//! hostile records), `input` (7: broken config and CLI input), `props` (8: property tests),
//! `underlay` (9: underlay changes), `backend_change` (10: a running network's backend changed). Test names are unique across the modules, so
//! `cargo test --test reliability r2_` still selects by scenario. (This file is the crate root,
//! which looks for modules beside itself, hence the `#[path]`s; a `reliability/main.rs` would be
//! a second test target of the same name.)

#[path = "reliability/backend_change.rs"]
mod backend_change;
#[path = "reliability/common.rs"]
mod common;
#[path = "reliability/input.rs"]
mod input;
#[path = "reliability/outages.rs"]
mod outages;
#[path = "reliability/props.rs"]
mod props;
#[path = "reliability/state.rs"]
mod state;
#[path = "reliability/subnets.rs"]
mod subnets;
#[path = "reliability/underlay.rs"]
mod underlay;
