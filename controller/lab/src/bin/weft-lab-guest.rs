//! The VM lab's guest command agent: runs inside a lab VM (started by the initramfs-written
//! `weft-lab-guest.service`) and answers the host's `weft_lab::vm::exec` over the virtio-serial
//! port `org.weft.lab.0`. The protocol and the loop live in `weft_lab::vm::{protocol, guest}`.

fn main() -> std::process::ExitCode {
    match weft_lab::vm::guest::serve() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("weft-lab-guest: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
