//! Little-endian integers at byte offsets of guest structures: `None`
//! when the field does not lie within the bytes, never a panic.

/// The `u16` at `at`.
pub fn le16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(at..at.checked_add(2)?)?.try_into().ok()?))
}

/// The `u32` at `at`.
pub fn le32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at.checked_add(4)?)?.try_into().ok()?))
}

/// The `u64` at `at`.
pub fn le64(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(at..at.checked_add(8)?)?.try_into().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_in_and_out_of_range() {
        let b = [1, 2, 3, 4, 5, 6, 7, 8];
        assert_eq!(le16(&b, 6), Some(0x0807));
        assert_eq!(le32(&b, 0), Some(0x0403_0201));
        assert_eq!(le64(&b, 0), Some(0x0807_0605_0403_0201));
        assert_eq!(le16(&b, 7), None);
        assert_eq!(le32(&b, usize::MAX), None);
        assert_eq!(le64(&b, 1), None);
    }
}
