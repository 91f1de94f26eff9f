//! Read buffers that become the packets: the UDP socket and the tun device read straight into
//! memory that then travels as the packet itself (`Bytes` split off the buffer), so neither
//! side copies a packet out of a scratch buffer. A buffer is taken back for the next read once
//! every packet split off it has been dropped (quinn drops a datagram once it is sent, and a
//! received packet once its datagrams were written to the tun); while one is still held, the
//! next read gets a fresh buffer instead.

use bytes::BytesMut;

/// One reusable read buffer of a fixed size.
pub(super) struct ReadBuf {
    /// `size` bytes when ready for a read; emptied by [`ReadBuf::take`].
    buf: BytesMut,
    size: usize,
}

impl ReadBuf {
    pub(super) fn new(size: usize) -> ReadBuf {
        ReadBuf { buf: BytesMut::zeroed(size), size }
    }

    /// Makes the whole buffer (`size` bytes) available again after a [`ReadBuf::take`]: the
    /// same memory when nothing split off it is alive any more, a new zeroed buffer otherwise.
    pub(super) fn ready(&mut self) {
        let len = self.buf.len();
        if len == self.size {
            return;
        }
        if self.buf.try_reclaim(self.size - len) {
            // SAFETY: `try_reclaim` succeeded without allocating, so the buffer still lies in
            // the allocation `BytesMut::zeroed` made, every byte of which was initialized then
            // (its capacity is exactly what was zeroed) and has only been written since; it now
            // has room for `size` bytes.
            unsafe { self.buf.set_len(self.size) }
        } else {
            self.buf = BytesMut::zeroed(self.size);
        }
    }

    /// The first `n` bytes, the part a read filled, as a packet of their own; the buffer is
    /// empty until [`ReadBuf::ready`].
    pub(super) fn take(&mut self, n: usize) -> BytesMut {
        let packet = self.buf.split_to(n.min(self.buf.len()));
        self.buf.clear();
        packet
    }
}

impl AsRef<[u8]> for ReadBuf {
    fn as_ref(&self) -> &[u8] {
        &self.buf
    }
}

impl AsMut<[u8]> for ReadBuf {
    fn as_mut(&mut self) -> &mut [u8] {
        &mut self.buf
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_buffer_is_reused_once_its_packets_are_dropped() {
        let mut b = ReadBuf::new(2048);
        let start = b.as_ref().as_ptr();
        b.as_mut()[..4].copy_from_slice(b"abcd");
        let packet = b.take(4).freeze();
        assert_eq!(&packet[..], b"abcd");
        assert!(b.as_ref().is_empty(), "taken: empty until ready");
        drop(packet);
        b.ready();
        assert_eq!(b.as_ref().len(), 2048);
        assert_eq!(b.as_ref().as_ptr(), start, "the same memory serves the next read");
    }

    #[test]
    fn a_packet_still_held_keeps_its_bytes_and_the_next_read_gets_new_memory() {
        let mut b = ReadBuf::new(1500);
        b.as_mut()[..3].copy_from_slice(b"xyz");
        let held = b.take(3).freeze();
        b.ready();
        assert_eq!(b.as_ref().len(), 1500);
        b.as_mut().fill(7);
        assert_eq!(&held[..], b"xyz", "a held packet is never overwritten");
        let second = b.take(1500);
        assert!(second.iter().all(|&x| x == 7));
    }

    #[test]
    fn ready_is_a_no_op_on_a_full_buffer_and_take_is_bounded() {
        let mut b = ReadBuf::new(64);
        b.ready();
        assert_eq!(b.as_ref().len(), 64);
        assert_eq!(b.take(100).len(), 64, "never more than the buffer holds");
        b.ready();
        assert_eq!(b.as_ref().len(), 64);
    }
}
