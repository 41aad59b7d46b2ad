//! HMAC-SHA-256 (RFC 2104) over SHA-256's compression function, for hmac-auth's verifier.
//!
//! A key's two padded blocks are hashed once, when the policy is built; a request then costs
//! its message's blocks from the inner state and one block from the outer. The `hmac` crate
//! does the same work through the `digest` traits, whose keyed state is ~200 bytes to clone
//! per request and whose block buffer copies the message's tail and the inner digest around:
//! ~310 instructions a request beside the compressions, here ~180 (docs/benchmarks.md,
//! session 20). SHA-384 and SHA-512 signatures, rarer, keep the `hmac` crate.

use sha2::compress256;
use sha2::digest::generic_array::GenericArray;

/// SHA-256's initial hash value (FIPS 180-4, 5.3.3).
const INITIAL: [u32; 8] = [
    0x6a09_e667,
    0xbb67_ae85,
    0x3c6e_f372,
    0xa54f_f53a,
    0x510e_527f,
    0x9b05_688c,
    0x1f83_d9ab,
    0x5be0_cd19,
];

const BLOCK: usize = 64;

/// A key's HMAC-SHA-256 states: SHA-256 after the key's inner and outer padded blocks.
#[derive(Clone)]
pub struct HmacSha256 {
    inner: [u32; 8],
    outer: [u32; 8],
}

impl HmacSha256 {
    /// Keys with `secret` (of any length: one longer than a block is hashed first).
    pub fn new(secret: &[u8]) -> Self {
        let mut key = [0u8; BLOCK];
        if secret.len() > BLOCK {
            key[..32].copy_from_slice(&hash(INITIAL, 0, secret));
        } else {
            key[..secret.len()].copy_from_slice(secret);
        }
        let padded = |pad: u8| {
            let mut state = INITIAL;
            compress(&mut state, &key.map(|byte| byte ^ pad));
            state
        };
        Self {
            inner: padded(0x36),
            outer: padded(0x5c),
        }
    }

    /// The tag of `message`.
    pub fn tag(&self, message: &[u8]) -> [u8; 32] {
        let inner = hash(self.inner, BLOCK as u64, message);
        hash(self.outer, BLOCK as u64, &inner)
    }
}

/// SHA-256 of a message whose first `done` bytes (whole blocks) left `state`, and whose rest
/// is `message`: its whole blocks are compressed where they are, the tail with its padding
/// (`0x80`, zeros, the length in bits) in one or two blocks.
fn hash(mut state: [u32; 8], done: u64, message: &[u8]) -> [u8; 32] {
    let (blocks, tail) = message.as_chunks::<BLOCK>();
    for block in blocks {
        compress(&mut state, block);
    }
    let mut last = [0u8; 2 * BLOCK];
    last[..tail.len()].copy_from_slice(tail);
    last[tail.len()] = 0x80;
    // The length takes the last 8 bytes: a tail of 56 bytes or more leaves no room for them
    // in its block.
    let end = if tail.len() < BLOCK - 8 {
        BLOCK
    } else {
        2 * BLOCK
    };
    let bits = (done + message.len() as u64) * 8;
    last[end - 8..end].copy_from_slice(&bits.to_be_bytes());
    for block in last[..end].as_chunks::<BLOCK>().0 {
        compress(&mut state, block);
    }
    let mut digest = [0u8; 32];
    for (bytes, word) in digest.as_chunks_mut::<4>().0.iter_mut().zip(state) {
        *bytes = word.to_be_bytes();
    }
    digest
}

/// One block into `state`: `sha2`'s compression, with the CPU's SHA instructions where it
/// has them.
fn compress(state: &mut [u32; 8], block: &[u8; BLOCK]) {
    compress256(state, std::slice::from_ref(GenericArray::from_slice(block)));
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use hmac::{Hmac, Mac};
    use proptest::prelude::*;
    use sha2::{Digest, Sha256};

    use super::*;

    /// Plain SHA-256 from the initial state, across the lengths where the padding takes one
    /// block or two, is `sha2`'s.
    #[test]
    fn it_hashes_as_sha256_does() {
        for len in 0..=3 * BLOCK {
            let message: Vec<u8> = (0..len).map(|i| (i * 7 + 3) as u8).collect();
            assert_eq!(
                hash(INITIAL, 0, &message),
                <[u8; 32]>::from(Sha256::digest(&message)),
                "{len} bytes"
            );
        }
    }

    proptest! {
        /// Any key (shorter, as long as, longer than a block) and message give the `hmac`
        /// crate's tag.
        #[test]
        fn tags_are_the_hmac_crates(
            secret in proptest::collection::vec(any::<u8>(), 0..200),
            message in proptest::collection::vec(any::<u8>(), 0..400),
        ) {
            let mut reference = <Hmac<Sha256> as Mac>::new_from_slice(&secret).unwrap();
            reference.update(&message);
            let expected: [u8; 32] = reference.finalize().into_bytes().into();
            prop_assert_eq!(HmacSha256::new(&secret).tag(&message), expected);
        }
    }
}
