//! Comparing secrets without telling how much of a guess was right.

/// Whether `a` and `b` are equal, in time that depends on their lengths only: there is no exit
/// at the first differing byte, which would tell a forger (of a tag, a token) how long a prefix
/// it got right. The lengths themselves are not secret.
pub fn eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let difference = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    // Keeps the compiler from turning the fold back into an early exit.
    std::hint::black_box(difference) == 0
}

#[cfg(test)]
mod tests {
    use super::eq;

    #[test]
    fn equal_bytes_match_and_any_difference_does_not() {
        let tag = [0x5au8; 32];
        assert!(eq(&tag, &tag));
        assert!(eq(b"", b""));
        for i in 0..tag.len() {
            for bit in 0..8 {
                let mut other = tag;
                other[i] ^= 1 << bit;
                assert!(!eq(&tag, &other), "byte {i} bit {bit}");
            }
        }
        assert!(!eq(&tag, &tag[..31]));
        assert!(!eq(&tag[..31], &tag));
    }
}
