//! Copying bytes the way small copies want it: the static (musl) binary's `memcpy`.
//!
//! musl's x86_64 `memcpy` copies with `rep movsq` between byte loops. Its start-up cost
//! dominates the copies async Rust makes all the time (futures and requests moved between
//! layers, a few dozen to a few hundred bytes): in the gateway's profile it was 16% of the CPU,
//! against 6% for glibc's on the same work. [`copy_forward`] copies up to 64 bytes with
//! overlapping unaligned loads and stores, up to 2 KiB in 32-byte blocks, and more with
//! `rep movsb` (on x86_64; elsewhere the blocks do the rest). `src/main.rs` exports it as
//! `memcpy` in the x86_64 musl build only.
//!
//! It copies forward, every load of a step before its stores, so it is also correct when the
//! destination starts below an overlapping source: musl's `memmove` calls it for that case.

#![allow(unsafe_code)]

/// From this many bytes up, `rep movsb` (fast strings) beats the block loop (x86_64; elsewhere
/// the loop copies everything).
#[cfg(target_arch = "x86_64")]
const REP_FROM: usize = 2048;

/// Copies `n` bytes from `src` to `dst`, forward.
///
/// # Safety
/// `src` must be readable and `dst` writable for `n` bytes; they may overlap only with `dst`
/// at or below `src`.
#[inline(always)]
#[allow(clippy::inline_always)] // its loop must land inside the exported `memcpy` (see main.rs)
pub unsafe fn copy_forward(dst: *mut u8, src: *const u8, n: usize) {
    // SAFETY: every access below is within the first `n` bytes of `src` or `dst`.
    unsafe {
        if n <= 16 {
            if n >= 8 {
                let (a, b) = (src.cast::<u64>().read_unaligned(), src.add(n - 8).cast::<u64>().read_unaligned());
                dst.cast::<u64>().write_unaligned(a);
                dst.add(n - 8).cast::<u64>().write_unaligned(b);
            } else if n >= 4 {
                let (a, b) = (src.cast::<u32>().read_unaligned(), src.add(n - 4).cast::<u32>().read_unaligned());
                dst.cast::<u32>().write_unaligned(a);
                dst.add(n - 4).cast::<u32>().write_unaligned(b);
            } else if n > 0 {
                let (a, b, c) = (*src, *src.add(n / 2), *src.add(n - 1));
                *dst = a;
                *dst.add(n / 2) = b;
                *dst.add(n - 1) = c;
            }
            return;
        }
        let load = |at: usize| src.add(at).cast::<u128>().read_unaligned();
        let store = |at: usize, v: u128| dst.add(at).cast::<u128>().write_unaligned(v);
        if n <= 32 {
            let (a, b) = (load(0), load(n - 16));
            store(0, a);
            store(n - 16, b);
            return;
        }
        if n <= 64 {
            let (h0, h1, t0, t1) = (load(0), load(16), load(n - 32), load(n - 16));
            store(0, h0);
            store(16, h1);
            store(n - 32, t0);
            store(n - 16, t1);
            return;
        }
        #[cfg(target_arch = "x86_64")]
        if n >= REP_FROM {
            // Forward (the ABI keeps the direction flag clear), byte for byte in effect.
            core::arch::asm!(
                "rep movsb",
                inout("rcx") n => _,
                inout("rdi") dst => _,
                inout("rsi") src => _,
                options(nostack, preserves_flags)
            );
            return;
        }
        // The last 32 bytes are read first: with an overlap, the blocks may overwrite them.
        let (t0, t1) = (load(n - 32), load(n - 16));
        let mut i = 0;
        while i < n - 32 {
            let (a, b) = (load(i), load(i + 16));
            store(i, a);
            store(i + 16, b);
            i += 32;
        }
        store(n - 32, t0);
        store(n - 16, t1);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use crate::memcopy::copy_forward;

    fn pattern(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 + 13) as u8 ^ (i >> 8) as u8).collect()
    }

    #[test]
    fn every_length_and_alignment_copies_exactly() {
        let lens = (0..300).chain([511, 512, 513, 1000, 2047, 2048, 2049, 4096, 10_000]);
        for len in lens {
            for (src_off, dst_off) in [(0, 0), (1, 0), (0, 3), (7, 9), (15, 1)] {
                let src = pattern(len + 32);
                let mut dst = vec![0xAAu8; len + 64];
                // SAFETY: both ranges are inside their vectors.
                unsafe { copy_forward(dst.as_mut_ptr().add(dst_off), src.as_ptr().add(src_off), len) };
                assert_eq!(&dst[dst_off..dst_off + len], &src[src_off..src_off + len], "len {len}");
                assert!(dst[..dst_off].iter().all(|&b| b == 0xAA), "wrote before, len {len}");
                assert!(dst[dst_off + len..].iter().all(|&b| b == 0xAA), "wrote past, len {len}");
            }
        }
    }

    #[test]
    fn a_destination_below_an_overlapping_source_gets_the_source_as_it_was() {
        for len in (0..300).chain([1000, 2047, 2048, 2049, 5000]) {
            for gap in [1, 2, 7, 16, 31, 32, 33, 100] {
                let mut buf = pattern(len + gap);
                let expected = buf[gap..gap + len].to_vec();
                let p = buf.as_mut_ptr();
                // SAFETY: both ranges are inside `buf`, the destination below the source.
                unsafe { copy_forward(p, p.add(gap), len) };
                assert_eq!(&buf[..len], &expected[..], "len {len}, gap {gap}");
            }
        }
    }
}
