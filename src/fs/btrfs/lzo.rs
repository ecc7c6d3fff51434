//! LZO1X decompression and btrfs's LZO framing. Guest data.
//!
//! Written here rather than taken from a crate: the pure-Rust LZO crates
//! are either GPL (`lzo1x`) or use `unsafe` pointer code (`lzokay-native`,
//! 23 `unsafe` blocks). This is the kernel's `lzo1x_decompress_safe`
//! (bitstream version 0, which is what btrfs writes) with every input
//! byte read through `get`, every back reference checked against the
//! output so far, and the output capped before it grows.
//!
//! btrfs frames LZO data (fs/btrfs/lzo.c): a 4-byte little-endian total
//! length (header included), then segments, each a 4-byte length and an
//! independent LZO1X stream decompressing to at most one sector; a segment
//! header never straddles a sector boundary (the rest of the sector is
//! zero padding).

/// Why LZO data was refused.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum LzoError {
    /// The input ended early.
    #[error("lzo input truncated")]
    Truncated,
    /// A back reference before the start of the output.
    #[error("lzo back reference before the start of the output")]
    BadReference,
    /// Output over the cap.
    #[error("lzo output over {0} bytes")]
    TooLong(usize),
    /// Bytes after the end marker, or a bad end marker.
    #[error("lzo stream does not end cleanly")]
    BadEnd,
    /// A bad btrfs frame.
    #[error("bad btrfs lzo framing: {0}")]
    Frame(&'static str),
}

struct In<'a> {
    b: &'a [u8],
    at: usize,
}

impl In<'_> {
    fn byte(&mut self) -> Result<usize, LzoError> {
        let v = self.b.get(self.at).copied().ok_or(LzoError::Truncated)?;
        self.at = self.at.saturating_add(1);
        Ok(usize::from(v))
    }

    fn le16(&mut self) -> Result<usize, LzoError> {
        let lo = self.byte()?;
        let hi = self.byte()?;
        Ok(lo | (hi << 8))
    }

    /// A run length extension: zero bytes count 255 each, then a final
    /// non-zero byte; the total is added to `base`.
    fn extended(&mut self, base: usize) -> Result<usize, LzoError> {
        let mut n = base;
        loop {
            let b = self.byte()?;
            if b != 0 {
                return n.checked_add(b).ok_or(LzoError::Truncated);
            }
            n = n.checked_add(255).ok_or(LzoError::Truncated)?;
        }
    }

    fn literals(&mut self, out: &mut Vec<u8>, n: usize, cap: usize) -> Result<(), LzoError> {
        if n > cap.saturating_sub(out.len()) {
            return Err(LzoError::TooLong(cap));
        }
        let end = self.at.checked_add(n).ok_or(LzoError::Truncated)?;
        let src = self.b.get(self.at..end).ok_or(LzoError::Truncated)?;
        out.extend_from_slice(src);
        self.at = end;
        Ok(())
    }
}

fn copy_match(out: &mut Vec<u8>, dist: usize, len: usize, cap: usize) -> Result<(), LzoError> {
    if dist == 0 || dist > out.len() {
        return Err(LzoError::BadReference);
    }
    if len > cap.saturating_sub(out.len()) {
        return Err(LzoError::TooLong(cap));
    }
    let start = out.len().saturating_sub(dist);
    if dist >= len {
        out.extend_from_within(start..start.saturating_add(len));
    } else {
        for i in 0..len {
            let b = out
                .get(start.saturating_add(i))
                .copied()
                .ok_or(LzoError::BadReference)?;
            out.push(b);
        }
    }
    Ok(())
}

/// Decompress one LZO1X stream, producing at most `cap` bytes.
pub fn decompress(src: &[u8], cap: usize) -> Result<Vec<u8>, LzoError> {
    let mut out = Vec::with_capacity(cap.min(src.len().saturating_mul(4)));
    let mut r = In { b: src, at: 0 };
    let mut state = 0usize;
    if src.first().is_some_and(|b| *b > 17) {
        let t = r.byte()?.saturating_sub(17);
        r.literals(&mut out, t, cap)?;
        state = if t < 4 { t } else { 4 };
    }
    loop {
        let t = r.byte()?;
        let (dist, len, next);
        if t < 16 {
            if state == 0 {
                let n = if t == 0 { r.extended(15)? } else { t };
                r.literals(&mut out, n.saturating_add(3), cap)?;
                state = 4;
                continue;
            }
            let b = r.byte()?;
            next = t & 3;
            if state != 4 {
                dist = 1usize.saturating_add(t >> 2).saturating_add(b << 2);
                len = 2;
            } else {
                dist = 0x801usize.saturating_add(t >> 2).saturating_add(b << 2);
                len = 3;
            }
        } else if t >= 64 {
            let b = r.byte()?;
            next = t & 3;
            dist = 1usize.saturating_add((t >> 2) & 7).saturating_add(b << 3);
            len = (t >> 5).saturating_add(1);
        } else if t >= 32 {
            len = if t & 31 == 0 { r.extended(31)? } else { t & 31 }.saturating_add(2);
            let v = r.le16()?;
            dist = 1usize.saturating_add(v >> 2);
            next = v & 3;
        } else {
            let hi = (t & 8) << 11;
            len = if t & 7 == 0 { r.extended(7)? } else { t & 7 }.saturating_add(2);
            let v = r.le16()?;
            next = v & 3;
            let d = hi.saturating_add(v >> 2);
            if d == 0 {
                // End of stream: must be the 3-byte marker, all input used.
                if len != 3 || r.at != src.len() {
                    return Err(LzoError::BadEnd);
                }
                return Ok(out);
            }
            dist = d.saturating_add(0x4000);
        }
        copy_match(&mut out, dist, len, cap)?;
        r.literals(&mut out, next, cap)?;
        state = next;
    }
}

/// Bytes of one sector's worth of compressed LZO at worst
/// (`lzo1x_worst_compress`).
fn worst(n: usize) -> usize {
    n.saturating_add(n / 16).saturating_add(64).saturating_add(3)
}

fn le32(b: &[u8], at: usize) -> Result<usize, LzoError> {
    let v = crate::bytes::le32(b, at).ok_or(LzoError::Frame("truncated length"))?;
    usize::try_from(v).map_err(|_| LzoError::Frame("length too large"))
}

/// Decompress a btrfs LZO extent (regular or inline) into at most `want`
/// bytes.
pub fn decompress_btrfs(src: &[u8], want: usize, sectorsize: u32) -> Result<Vec<u8>, LzoError> {
    let sector = usize::try_from(sectorsize).unwrap_or(4096).max(4096);
    let total = le32(src, 0)?;
    if total > src.len() || total < 4 {
        return Err(LzoError::Frame("total length out of range"));
    }
    let mut out = Vec::with_capacity(want);
    let mut cur = 4usize;
    while cur < total && out.len() < want {
        let seg_len = le32(src, cur)?;
        cur = cur.saturating_add(4);
        if seg_len > worst(sector) {
            return Err(LzoError::Frame("segment longer than a compressed sector"));
        }
        let end = cur
            .checked_add(seg_len)
            .filter(|e| *e <= total)
            .ok_or(LzoError::Frame("segment past the end"))?;
        let seg = src.get(cur..end).ok_or(LzoError::Frame("segment past the end"))?;
        let part = decompress(seg, sector)?;
        let room = want.saturating_sub(out.len());
        out.extend_from_slice(part.get(..room.min(part.len())).unwrap_or_default());
        cur = end;
        let left = sector.saturating_sub(cur % sector);
        if left < 4 {
            cur = cur.saturating_add(left);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literal_only_stream() {
        // First byte 17 + 5: five literals, then the end marker.
        let s = [22, b'h', b'e', b'l', b'l', b'o', 0x11, 0, 0];
        assert_eq!(decompress(&s, 100).unwrap(), b"hello");
        assert_eq!(decompress(&s, 4), Err(LzoError::TooLong(4)));
        assert_eq!(decompress(&s[..8], 100), Err(LzoError::Truncated));
        let mut trailing = s.to_vec();
        trailing.push(0);
        assert_eq!(decompress(&trailing, 100), Err(LzoError::BadEnd));
    }

    #[test]
    fn overlapping_match() {
        // "ab" then an M2 match of length 3 at distance 2 ("aba"), end.
        // M2: t >= 64, len = (t >> 5) + 1 = 3 -> t >> 5 = 2; dist - 1 =
        // ((t >> 2) & 7) + (b << 3) = 1 -> t = 0b010_001_00 = 0x44, b = 0.
        let s = [19, b'a', b'b', 0x44, 0, 0x11, 0, 0];
        assert_eq!(decompress(&s, 100).unwrap(), b"ababa");
    }

    #[test]
    fn hostile_streams() {
        // A match before the start of the output.
        assert_eq!(
            decompress(&[19, b'a', b'b', 0x44, 9, 0x11, 0, 0], 100),
            Err(LzoError::BadReference)
        );
        // A literal run that claims far more than the cap.
        let mut s = vec![0u8; 1000];
        s.push(1);
        assert_eq!(decompress(&s, 4096), Err(LzoError::TooLong(4096)));
        // Zero-length input.
        assert_eq!(decompress(&[], 10), Err(LzoError::Truncated));
    }

    #[test]
    fn btrfs_framing() {
        let seg = [22, b'h', b'e', b'l', b'l', b'o', 0x11, 0, 0];
        let mut f = Vec::new();
        f.extend_from_slice(&u32::try_from(4 + 4 + seg.len()).unwrap().to_le_bytes());
        f.extend_from_slice(&u32::try_from(seg.len()).unwrap().to_le_bytes());
        f.extend_from_slice(&seg);
        assert_eq!(decompress_btrfs(&f, 5, 4096).unwrap(), b"hello");
        assert_eq!(decompress_btrfs(&f, 3, 4096).unwrap(), b"hel");
        let mut bad = f.clone();
        bad[0] = 200;
        assert!(decompress_btrfs(&bad, 5, 4096).is_err());
        let mut bad = f.clone();
        bad[4] = 200;
        assert!(decompress_btrfs(&bad, 5, 4096).is_err());
    }
}
