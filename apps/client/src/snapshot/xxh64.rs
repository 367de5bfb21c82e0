//! XXH64 (Yann Collet's xxHash, 64-bit): the snapshot file's trailer checksum.

pub(super) const P1: u64 = 0x9E37_79B1_85EB_CA87;
pub(super) const P2: u64 = 0xC2B2_AE3D_27D4_EB4F;
pub(super) const P3: u64 = 0x1656_67B1_9E37_79F9;
pub(super) const P4: u64 = 0x85EB_CA77_C2B2_AE63;
pub(super) const P5: u64 = 0x27D4_EB2F_1656_67C5;

/// XXH64 (seed 0) computed over data fed in pieces.
#[derive(Clone, Debug)]
pub struct Xxh64 {
    pub(super) lanes: [u64; 4],
    pub(super) buffer: [u8; 32],
    pub(super) buffered: usize,
    pub(super) total: u64,
}

impl Default for Xxh64 {
    fn default() -> Self {
        Self::new()
    }
}

#[inline]
pub(super) fn xxh_round(acc: u64, input: u64) -> u64 {
    acc.wrapping_add(input.wrapping_mul(P2))
        .rotate_left(31)
        .wrapping_mul(P1)
}

#[inline]
pub(super) fn read_u64_le(bytes: &[u8]) -> u64 {
    u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes"))
}

impl Xxh64 {
    /// A fresh hasher with seed 0.
    pub fn new() -> Self {
        Self {
            lanes: [P1.wrapping_add(P2), P2, 0, 0u64.wrapping_sub(P1)],
            buffer: [0; 32],
            buffered: 0,
            total: 0,
        }
    }

    pub(super) fn stripe(lanes: &mut [u64; 4], stripe: &[u8]) {
        for (i, lane) in lanes.iter_mut().enumerate() {
            *lane = xxh_round(*lane, read_u64_le(&stripe[i * 8..]));
        }
    }

    /// Feeds `data`.
    pub fn update(&mut self, mut data: &[u8]) {
        self.total += data.len() as u64;
        if self.buffered > 0 {
            let take = (32 - self.buffered).min(data.len());
            self.buffer[self.buffered..self.buffered + take].copy_from_slice(&data[..take]);
            self.buffered += take;
            data = &data[take..];
            if self.buffered < 32 {
                return;
            }
            let buffer = self.buffer;
            Self::stripe(&mut self.lanes, &buffer);
            self.buffered = 0;
        }
        while data.len() >= 32 {
            Self::stripe(&mut self.lanes, &data[..32]);
            data = &data[32..];
        }
        self.buffer[..data.len()].copy_from_slice(data);
        self.buffered = data.len();
    }

    /// The hash of everything fed so far.
    pub fn digest(&self) -> u64 {
        let [v1, v2, v3, v4] = self.lanes;
        let mut h = if self.total >= 32 {
            let mut h = v1
                .rotate_left(1)
                .wrapping_add(v2.rotate_left(7))
                .wrapping_add(v3.rotate_left(12))
                .wrapping_add(v4.rotate_left(18));
            for v in [v1, v2, v3, v4] {
                h = (h ^ xxh_round(0, v)).wrapping_mul(P1).wrapping_add(P4);
            }
            h
        } else {
            P5
        };
        h = h.wrapping_add(self.total);
        let mut rest = &self.buffer[..self.buffered];
        while rest.len() >= 8 {
            h ^= xxh_round(0, read_u64_le(rest));
            h = h.rotate_left(27).wrapping_mul(P1).wrapping_add(P4);
            rest = &rest[8..];
        }
        if rest.len() >= 4 {
            let word = u32::from_le_bytes(rest[..4].try_into().expect("4 bytes"));
            h ^= u64::from(word).wrapping_mul(P1);
            h = h.rotate_left(23).wrapping_mul(P2).wrapping_add(P3);
            rest = &rest[4..];
        }
        for &byte in rest {
            h ^= u64::from(byte).wrapping_mul(P5);
            h = h.rotate_left(11).wrapping_mul(P1);
        }
        h ^= h >> 33;
        h = h.wrapping_mul(P2);
        h ^= h >> 29;
        h = h.wrapping_mul(P3);
        h ^ (h >> 32)
    }
}

/// XXH64 (seed 0) of `data`.
pub fn xxh64(data: &[u8]) -> u64 {
    let mut hasher = Xxh64::new();
    hasher.update(data);
    hasher.digest()
}

// ---------------------------------------------------------------------------
// Writing.
