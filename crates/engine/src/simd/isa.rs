//! Which instruction set the kernels run on: detected once, capped by
//! `REPRISE_CPU_ISA`.

use std::sync::OnceLock;

/// An instruction set the kernels are written for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Isa {
    /// Portable Rust (what the compiler makes of it for the build target).
    Scalar,
    /// x86-64 AVX2 with FMA and F16C.
    Avx2,
    /// x86-64 AVX-512 (F, BW, VL) beside AVX2, FMA and F16C.
    Avx512,
    /// aarch64 Advanced SIMD (NEON).
    Neon,
}

impl Isa {
    /// Its name, as the startup line and `REPRISE_CPU_ISA` write it.
    pub fn name(self) -> &'static str {
        match self {
            Isa::Scalar => "scalar",
            Isa::Avx2 => "avx2",
            Isa::Avx512 => "avx512",
            Isa::Neon => "neon",
        }
    }

    /// The ISA a `REPRISE_CPU_ISA` value names.
    pub(crate) fn parse(s: &str) -> Option<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "scalar" | "portable" | "none" => Some(Isa::Scalar),
            "avx2" => Some(Isa::Avx2),
            "avx512" | "avx-512" => Some(Isa::Avx512),
            "neon" | "asimd" => Some(Isa::Neon),
            _ => None,
        }
    }

    /// How wide: what `REPRISE_CPU_ISA` caps (on another architecture, a name
    /// caps at its level: `avx2` on aarch64 still runs NEON).
    fn level(self) -> u8 {
        match self {
            Isa::Scalar => 0,
            Isa::Avx2 | Isa::Neon => 1,
            Isa::Avx512 => 2,
        }
    }

    /// Every instruction set this CPU can run, best first (tests run each).
    pub fn available() -> Vec<Isa> {
        let best = detect();
        let family: &[Isa] = if best == Isa::Neon {
            &[Isa::Neon, Isa::Scalar]
        } else {
            &[Isa::Avx512, Isa::Avx2, Isa::Scalar]
        };
        family
            .iter()
            .copied()
            .filter(|i| i.level() <= best.level())
            .collect()
    }
}

/// The best instruction set this CPU has, whatever `REPRISE_CPU_ISA` says.
pub fn detect() -> Isa {
    #[cfg(target_arch = "x86_64")]
    {
        let avx2 = is_x86_feature_detected!("avx2")
            && is_x86_feature_detected!("fma")
            && is_x86_feature_detected!("f16c");
        let avx512 = is_x86_feature_detected!("avx512f")
            && is_x86_feature_detected!("avx512bw")
            && is_x86_feature_detected!("avx512vl");
        if avx2 && avx512 {
            return Isa::Avx512;
        }
        if avx2 {
            return Isa::Avx2;
        }
    }
    #[cfg(target_arch = "aarch64")]
    if std::arch::is_aarch64_feature_detected!("neon") {
        return Isa::Neon;
    }
    Isa::Scalar
}

/// The instruction set every kernel of this process uses: the CPU's best, or a lower
/// one named by `REPRISE_CPU_ISA` (`scalar`, `avx2`, `avx512`, `neon`; never above
/// what the CPU has). Decided once.
pub fn isa() -> Isa {
    static ISA: OnceLock<Isa> = OnceLock::new();
    *ISA.get_or_init(|| {
        let best = detect();
        match std::env::var("REPRISE_CPU_ISA")
            .ok()
            .as_deref()
            .map(Isa::parse)
        {
            Some(Some(asked)) => Isa::available()
                .into_iter()
                .find(|i| i.level() <= asked.level())
                .unwrap_or(Isa::Scalar),
            Some(None) => {
                tracing::warn!(
                    "REPRISE_CPU_ISA is not one of scalar, avx2, avx512, neon; using {}",
                    best.name()
                );
                best
            }
            None => best,
        }
    })
}
