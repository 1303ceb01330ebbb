//! net-virtio: the virtio-net driver (virtio 1.2 spec §5.1), polled. Receive queue 0 holds
//! fixed buffers the device fills; transmit queue 1 takes frames from a small pool of buffers
//! reclaimed from its used ring. Each buffer is one descriptor: the virtio-net header, then the
//! Ethernet frame. Only the MAC feature is negotiated (no offloads: the stack computes
//! checksums; no mergeable buffers: a frame fits one 2 KiB buffer).

use crate::virtio::{self, Transport, Virtqueue};
use alloc::{boxed::Box, vec, vec::Vec};

/// VIRTIO_NET_F_MAC: the device's MAC address is in its configuration space.
const F_MAC: u64 = 1 << 5;
const BUF_SIZE: usize = 2048;
/// Up to this many buffers per queue (fewer if the device's queues are smaller).
const QUEUE_MAX: u16 = 128;
/// Largest Ethernet frame without the FCS (1500-byte MTU).
pub const MAX_FRAME: usize = 1514;

/// One direction: its queue and buffers (buffer i is descriptor i).
struct Ring {
    queue: Virtqueue,
    bufs: Box<[[u8; BUF_SIZE]]>,
}

impl Ring {
    fn new(queue: Virtqueue) -> Ring {
        let bufs = vec![[0u8; BUF_SIZE]; queue.size as usize].into_boxed_slice();
        Ring { queue, bufs }
    }

    fn addr(&self, id: u16) -> u64 {
        self.bufs[id as usize].as_ptr() as u64
    }
}

/// Receive side.
pub struct Rx {
    ring: Ring,
    hdr: usize,
}

/// Transmit side: descriptor ids not in the device's hands.
pub struct Tx {
    ring: Ring,
    hdr: usize,
    free: Vec<u16>,
}

/// A virtio-net device, ready.
pub struct VirtioNet {
    pub rx: Rx,
    pub tx: Tx,
    pub mac: [u8; 6],
}

impl VirtioNet {
    /// Finds and initialises the first virtio-net device.
    #[inline(never)]
    pub fn init() -> Option<VirtioNet> {
        let dev = virtio::find(virtio::DEVICE_NET)?;
        Self::init_on(dev.transport)
    }

    fn init_on(t: Transport) -> Option<VirtioNet> {
        let features = t.begin_init(F_MAC)?;
        // The header is 12 bytes with VERSION_1 (num_buffers always present), 10 for legacy.
        let hdr = if t.is_modern() { 12 } else { 10 };
        let mut mac = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];
        if features & F_MAC != 0 {
            for (i, b) in mac.iter_mut().enumerate() {
                *b = t.config_u8(i as u64);
            }
        }
        let mut rx = Rx { ring: Ring::new(t.queue(0, QUEUE_MAX)?), hdr };
        let tx_ring = Ring::new(t.queue(1, QUEUE_MAX)?);
        let free = (0..tx_ring.queue.size).rev().collect();
        let tx = Tx { ring: tx_ring, hdr, free };
        t.finish_init();
        for id in 0..rx.ring.queue.size {
            let addr = rx.ring.addr(id);
            rx.ring.queue.push(id, addr, BUF_SIZE as u32, true);
        }
        rx.ring.queue.kick();
        Some(VirtioNet { rx, tx, mac })
    }
}

impl Rx {
    /// The next received frame: (descriptor id, frame length). Give the id back with `recycle`.
    pub fn next(&mut self) -> Option<(u16, usize)> {
        let (id, len) = self.ring.queue.pop_used()?;
        Some((id, (len as usize).saturating_sub(self.hdr).min(BUF_SIZE - self.hdr)))
    }

    /// The frame in buffer `id`.
    pub fn frame(&mut self, id: u16, len: usize) -> &mut [u8] {
        let hdr = self.hdr;
        &mut self.ring.bufs[id as usize][hdr..hdr + len]
    }

    /// Returns buffer `id` to the device.
    pub fn recycle(&mut self, id: u16) {
        let addr = self.ring.addr(id);
        self.ring.queue.push(id, addr, BUF_SIZE as u32, true);
        self.ring.queue.kick();
    }
}

impl Tx {
    fn reclaim(&mut self) {
        while let Some((id, _)) = self.ring.queue.pop_used() {
            self.free.push(id);
        }
    }

    /// Whether a transmit buffer is free (reclaiming the ones the device has sent).
    pub fn has_free(&mut self) -> bool {
        self.reclaim();
        !self.free.is_empty()
    }

    /// A free transmit buffer's id.
    pub fn alloc(&mut self) -> Option<u16> {
        self.reclaim();
        self.free.pop()
    }

    /// The frame area of buffer `id` (`len` ≤ MAX_FRAME bytes), header zeroed.
    pub fn frame(&mut self, id: u16, len: usize) -> &mut [u8] {
        let hdr = self.hdr;
        let buf = &mut self.ring.bufs[id as usize];
        buf[..hdr].fill(0); // no checksum offload, no segmentation
        &mut buf[hdr..hdr + len.min(BUF_SIZE - hdr)]
    }

    /// Sends `len` frame bytes of buffer `id`.
    pub fn send(&mut self, id: u16, len: usize) {
        let addr = self.ring.addr(id);
        let total = (self.hdr + len).min(BUF_SIZE) as u32;
        self.ring.queue.push(id, addr, total, false);
        self.ring.queue.kick();
    }
}
