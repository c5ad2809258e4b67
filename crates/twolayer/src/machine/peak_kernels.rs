//! Register-only loops of the instruction each dtype's GEMM runs on: what
//! a core can do when nothing waits on memory. [`super::peak`] times them.
//!
//! Each loop keeps `CHAINS` independent accumulators, more than an FMA's
//! latency (4 cycles) times its ports (2) needs, so the loop is bound by
//! the instruction's throughput alone. The loops are written in assembly:
//! from intrinsics the compiler shuffled the accumulators between
//! registers and the stack every iteration (the f32 loop measured 70% of
//! what this one does). Each
//! returns the sum of its accumulators, which the tests check against the
//! arithmetic the loop claims to do: the flop counts below are the loops'
//! own, verified, not assumed.
//!
//! | loop | instruction | flops per iteration |
//! |---|---|---|
//! | `fma_f64_512` | `vfmadd…pd zmm` (8 lanes) | 16 chains × 8 × 2 = 256 |
//! | `fma_f32_512` | `vfmadd…ps zmm` (16 lanes) | 16 × 16 × 2 = 512 |
//! | `fma_f64_256` | `vfmadd…pd ymm` (4 lanes) | 12 × 4 × 2 = 96 |
//! | `fma_f32_256` | `vfmadd…ps ymm` (8 lanes) | 12 × 8 × 2 = 192 |
//! | `dpbf16` | `vdpbf16ps zmm` (16 lanes × 2 bf16 pairs) | 16 × 16 × 2 × 2 = 1024 |
//! | `amx_bf16` | `tdpbf16ps` (16×16 f32 += 16×32 bf16 · 32×16 bf16) | 4 tiles × 16·16·32·2 = 65,536 |

#![allow(unsafe_code)]

use std::arch::asm;
use std::arch::x86_64::*;
use std::hint::black_box;

/// Accumulators of the 512-bit loops.
const CHAINS: usize = 16;
/// Accumulators of the 256-bit loops (16 ymm registers in all).
const CHAINS_256: usize = 12;

/// Flops one iteration of each loop does.
pub const FLOPS_F64_512: f64 = (CHAINS * 8 * 2) as f64;
/// See the module's table.
pub const FLOPS_F32_512: f64 = (CHAINS * 16 * 2) as f64;
/// See the module's table.
pub const FLOPS_F64_256: f64 = (CHAINS_256 * 4 * 2) as f64;
/// See the module's table.
pub const FLOPS_F32_256: f64 = (CHAINS_256 * 8 * 2) as f64;
/// See the module's table.
pub const FLOPS_DPBF16: f64 = (CHAINS * 16 * 2 * 2) as f64;
/// See the module's table.
pub const FLOPS_AMX_BF16: f64 = (AMX_TILES * 16 * 16 * 32 * 2) as f64;

/// Writes one register loop: `$insn c, a, b` on each accumulator in turn,
/// `iters` times, in assembly (the accumulators are the operands named
/// after them, so they stay in registers), then `$reduce` of them.
macro_rules! register_loop {
    (
        $(#[$doc:meta])*
        fn $name:ident, feature $feature:literal, $insn:literal on $reg:tt,
        $zero:expr, [$($c:ident),+],
        |$a:ident, $b:ident| $init:block,
        |$acc:ident| $reduce:expr
    ) => {
        $(#[$doc])*
        #[target_feature(enable = $feature)]
        pub unsafe fn $name(iters: u64) -> f64 {
            let ($a, $b) = $init;
            $(let mut $c = $zero;)+
            if iters > 0 {
                // SAFETY: registers only; the loop counts `iters` down to
                // zero.
                asm!(
                    "2:",
                    $(concat!($insn, " {", stringify!($c), "}, {a}, {b}"),)+
                    "dec {n}",
                    "jnz 2b",
                    n = inout(reg) iters => _,
                    a = in($reg) $a,
                    b = in($reg) $b,
                    $($c = inout($reg) $c,)+
                    options(nomem, nostack)
                );
            }
            let $acc = [$($c),+];
            $reduce
        }
    };
}

register_loop! {
    /// `iters` rounds of c ← a·b + c (`vfmadd231pd`) on 16 zmm accumulators
    /// of f64, a = 1 and b = ½: each lane ends at iters/2.
    ///
    /// # Safety
    /// The CPU must have AVX-512F.
    fn fma_f64_512, feature "avx512f", "vfmadd231pd" on zmm_reg,
    _mm512_setzero_pd(), [c0, c1, c2, c3, c4, c5, c6, c7, c8, c9, c10, c11, c12, c13, c14, c15],
    |a, b| { (_mm512_set1_pd(black_box(1.0)), _mm512_set1_pd(black_box(0.5))) },
    |acc| acc.iter().map(|&c| _mm512_reduce_add_pd(c)).sum()
}

register_loop! {
    /// The same in f32 (`vfmadd231ps`, 16 lanes).
    ///
    /// # Safety
    /// The CPU must have AVX-512F.
    fn fma_f32_512, feature "avx512f", "vfmadd231ps" on zmm_reg,
    _mm512_setzero_ps(), [c0, c1, c2, c3, c4, c5, c6, c7, c8, c9, c10, c11, c12, c13, c14, c15],
    |a, b| { (_mm512_set1_ps(black_box(1.0)), _mm512_set1_ps(black_box(0.5))) },
    |acc| acc.iter().map(|&c| _mm512_reduce_add_ps(c) as f64).sum()
}

register_loop! {
    /// The f64 loop on 256-bit registers (12 accumulators), for CPUs with
    /// AVX2 and FMA only.
    ///
    /// # Safety
    /// The CPU must have AVX2 and FMA.
    fn fma_f64_256, feature "avx2,fma", "vfmadd231pd" on ymm_reg,
    _mm256_setzero_pd(), [c0, c1, c2, c3, c4, c5, c6, c7, c8, c9, c10, c11],
    |a, b| { (_mm256_set1_pd(black_box(1.0)), _mm256_set1_pd(black_box(0.5))) },
    |acc| {
        let mut lanes = [0.0f64; 4];
        acc.iter()
            .map(|&c| {
                _mm256_storeu_pd(lanes.as_mut_ptr(), c);
                lanes.iter().sum::<f64>()
            })
            .sum()
    }
}

register_loop! {
    /// The f32 loop on 256-bit registers.
    ///
    /// # Safety
    /// The CPU must have AVX2 and FMA.
    fn fma_f32_256, feature "avx2,fma", "vfmadd231ps" on ymm_reg,
    _mm256_setzero_ps(), [c0, c1, c2, c3, c4, c5, c6, c7, c8, c9, c10, c11],
    |a, b| { (_mm256_set1_ps(black_box(1.0)), _mm256_set1_ps(black_box(0.5))) },
    |acc| {
        let mut lanes = [0.0f32; 8];
        acc.iter()
            .map(|&c| {
                _mm256_storeu_ps(lanes.as_mut_ptr(), c);
                lanes.iter().map(|&x| x as f64).sum::<f64>()
            })
            .sum()
    }
}

register_loop! {
    /// `iters` rounds of c ← c + a₀b₀ + a₁b₁ per f32 lane (`vdpbf16ps`),
    /// a = b = 1 in bf16: each lane ends at 2·iters.
    ///
    /// # Safety
    /// The CPU must have AVX-512F and AVX512_BF16.
    fn dpbf16, feature "avx512f,avx512bf16", "vdpbf16ps" on zmm_reg,
    _mm512_setzero_ps(), [c0, c1, c2, c3, c4, c5, c6, c7, c8, c9, c10, c11, c12, c13, c14, c15],
    |a, b| {
        let one = _mm512_set1_ps(black_box(1.0));
        let a = _mm512_cvtne2ps_pbh(one, one);
        (a, a)
    },
    |acc| acc.iter().map(|&c| _mm512_reduce_add_ps(c) as f64).sum()
}

/// Accumulator tiles of the AMX loop.
const AMX_TILES: usize = 4;

/// The tile configuration `ldtilecfg` reads (palette 1): 64 bytes.
#[repr(C, align(64))]
struct TileConfig {
    palette: u8,
    start_row: u8,
    reserved: [u8; 14],
    colsb: [u16; 16],
    rows: [u8; 16],
}

/// Asks the kernel for the AMX tile state (Linux gives it to a process
/// only on request): true when granted.
pub fn amx_permitted() -> bool {
    const ARCH_REQ_XCOMP_PERM: libc::c_long = 0x1023;
    const XFEATURE_XTILEDATA: libc::c_long = 18;
    // SAFETY: arch_prctl with this request only changes the process's
    // permission to use the AMX state.
    unsafe {
        libc::syscall(
            libc::SYS_arch_prctl,
            ARCH_REQ_XCOMP_PERM,
            XFEATURE_XTILEDATA,
        ) == 0
    }
}

/// `iters` rounds of four `tdpbf16ps`, each C (16×16 f32) += A (16×32
/// bf16) · B (32×16 bf16, in AMX's pair layout), A and B all ones: each
/// element of the four C tiles ends at 32·iters.
///
/// # Safety
/// The CPU must have AMX-TILE and AMX-BF16, and [`amx_permitted`] must
/// have returned true in this process.
pub unsafe fn amx_bf16(iters: u64) -> f64 {
    let mut cfg = TileConfig {
        palette: 1,
        start_row: 0,
        reserved: [0; 14],
        colsb: [0; 16],
        rows: [0; 16],
    };
    // tmm0–3: C, 16 rows of 16 f32; tmm4–5: A, tmm6–7: B, 16 rows of 64 bytes.
    for t in 0..8 {
        cfg.colsb[t] = 64;
        cfg.rows[t] = 16;
    }
    let ones = [0x3f80u16; 16 * 32]; // bf16 1.0
    let mut c = [0.0f32; 16 * 16];
    let stride = 64usize;
    let n = black_box(iters);
    // SAFETY: the caller guarantees AMX; the buffers outlive the asm, the
    // tiles are configured before use and released after.
    unsafe {
        asm!("ldtilecfg [{0}]", in(reg) &cfg as *const TileConfig, options(nostack));
        asm!(
            "tilezero tmm0",
            "tilezero tmm1",
            "tilezero tmm2",
            "tilezero tmm3",
            "tileloadd tmm4, [{p} + {s}*1]",
            "tileloadd tmm5, [{p} + {s}*1]",
            "tileloadd tmm6, [{p} + {s}*1]",
            "tileloadd tmm7, [{p} + {s}*1]",
            p = in(reg) ones.as_ptr(),
            s = in(reg) stride,
            options(nostack)
        );
        if n > 0 {
            asm!(
                "2:",
                "tdpbf16ps tmm0, tmm4, tmm6",
                "tdpbf16ps tmm1, tmm4, tmm7",
                "tdpbf16ps tmm2, tmm5, tmm6",
                "tdpbf16ps tmm3, tmm5, tmm7",
                "dec {n}",
                "jnz 2b",
                n = inout(reg) n => _,
                options(nostack)
            );
        }
        let mut total = 0.0;
        for t in 0..AMX_TILES {
            match t {
                0 => {
                    asm!("tilestored [{p} + {s}*1], tmm0", p = in(reg) c.as_mut_ptr(), s = in(reg) stride, options(nostack))
                }
                1 => {
                    asm!("tilestored [{p} + {s}*1], tmm1", p = in(reg) c.as_mut_ptr(), s = in(reg) stride, options(nostack))
                }
                2 => {
                    asm!("tilestored [{p} + {s}*1], tmm2", p = in(reg) c.as_mut_ptr(), s = in(reg) stride, options(nostack))
                }
                _ => {
                    asm!("tilestored [{p} + {s}*1], tmm3", p = in(reg) c.as_mut_ptr(), s = in(reg) stride, options(nostack))
                }
            }
            total += c.iter().map(|&x| x as f64).sum::<f64>();
        }
        asm!("tilerelease", options(nostack));
        total
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each loop does the arithmetic its flop count says: the sum of its
    /// accumulators is (flops per iteration / 2) multiply-adds' worth.
    #[test]
    fn every_loop_does_the_arithmetic_it_counts() {
        let iters = 1000u64;
        let flags = crate::machine::cpu_flags();
        let has = |f: &str| flags.iter().any(|x| x == f);
        // c ← 1·c + ½ per lane, one FMA (2 flops) per lane an iteration:
        // flops/2 lanes in all, each ending at iters/2.
        let fma = |sum: f64, flops: f64| sum == (flops / 2.0) * (iters as f64 * 0.5);
        if has("avx2") && has("fma") {
            let s = unsafe { fma_f64_256(iters) };
            assert!(fma(s, FLOPS_F64_256), "f64 256: {s}");
            let s = unsafe { fma_f32_256(iters) };
            assert!(fma(s, FLOPS_F32_256), "f32 256: {s}");
        }
        if has("avx512f") {
            let s = unsafe { fma_f64_512(iters) };
            assert!(fma(s, FLOPS_F64_512), "f64 512: {s}");
            let s = unsafe { fma_f32_512(iters) };
            assert!(fma(s, FLOPS_F32_512), "f32 512: {s}");
        }
        if has("avx512f") && has("avx512_bf16") {
            // 2 per lane per iteration; a lane's 2 products are 4 flops.
            let s = unsafe { dpbf16(iters) };
            assert_eq!(s, FLOPS_DPBF16 / 4.0 * 2.0 * iters as f64, "dpbf16");
        }
        if has("amx_tile") && has("amx_bf16") && amx_permitted() {
            // 32 per element per iteration; an element's 32 products are
            // 64 flops.
            let s = unsafe { amx_bf16(iters) };
            assert_eq!(s, FLOPS_AMX_BF16 / 64.0 * 32.0 * iters as f64, "amx");
        }
    }
}
