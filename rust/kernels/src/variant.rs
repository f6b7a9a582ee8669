//! Choosing a kernel variant at run time.
//!
//! The crate is built for generic x86-64 (no `-march=native`): SIMD code lives in functions with
//! `#[target_feature]`, and is only called after `is_x86_feature_detected!` said the CPU has it.
//! The only way to obtain a [`Kernel`] (what the drivers call) is [`Kernel::resolve`], which performs
//! that check; that is the safety argument for every `unsafe` SIMD call in `tile.rs`.

use crate::KernelError;

/// Environment variable that forces a variant: `scalar`, `avx2`, `avx512` or `auto`.
pub const KERNEL_ENV: &str = "NCT_KERNEL";

/// A kernel implementation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Variant {
    /// Portable reference; defines the result.
    Scalar,
    /// AVX2 (`vpmaddubsw` + `vpmaddwd`), 256-bit.
    Avx2,
    /// AVX-512 F/BW + VNNI (`vpdpbusd`), 512-bit.
    Avx512,
    /// AVX-512 VNNI for one token, AMX-INT8 tile products (`tdpbsud`) for many: Intel Sapphire
    /// Rapids and later, where the OS grants the tile state.
    Amx,
}

impl Variant {
    pub const ALL: [Variant; 4] = [Variant::Scalar, Variant::Avx2, Variant::Avx512, Variant::Amx];

    pub fn name(self) -> &'static str {
        match self {
            Variant::Scalar => "scalar",
            Variant::Avx2 => "avx2",
            Variant::Avx512 => "avx512",
            Variant::Amx => "amx",
        }
    }

    /// Parses `scalar | avx2 | avx512 | amx`; `auto` (or empty) means "detect" and gives `None`.
    pub fn parse(name: &str) -> Result<Option<Variant>, KernelError> {
        match name.trim().to_ascii_lowercase().as_str() {
            "" | "auto" => Ok(None),
            "scalar" => Ok(Some(Variant::Scalar)),
            "avx2" => Ok(Some(Variant::Avx2)),
            "avx512" | "avx512vnni" => Ok(Some(Variant::Avx512)),
            "amx" => Ok(Some(Variant::Amx)),
            _ => Err(KernelError::UnknownVariant(name.to_string())),
        }
    }

    /// Whether this CPU can run the variant.
    pub fn is_supported(self) -> bool {
        match self {
            Variant::Scalar => true,
            #[cfg(target_arch = "x86_64")]
            Variant::Avx2 => is_x86_feature_detected!("avx2"),
            #[cfg(target_arch = "x86_64")]
            Variant::Avx512 => {
                is_x86_feature_detected!("avx512f")
                    && is_x86_feature_detected!("avx512bw")
                    && is_x86_feature_detected!("avx512vnni")
            }
            #[cfg(target_arch = "x86_64")]
            Variant::Amx => Variant::Avx512.is_supported() && crate::amx::available(),
            #[cfg(not(target_arch = "x86_64"))]
            _ => false,
        }
    }

    /// The fastest variant this CPU supports.
    pub fn best() -> Variant {
        [Variant::Amx, Variant::Avx512, Variant::Avx2].into_iter().find(|v| v.is_supported()).unwrap_or(Variant::Scalar)
    }

    /// Variants this CPU supports, slowest first.
    pub fn supported() -> Vec<Variant> {
        Variant::ALL.into_iter().filter(|v| v.is_supported()).collect()
    }
}

impl std::fmt::Display for Variant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A variant checked to run on this CPU. Private field: only [`Kernel::resolve`] makes one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Kernel(Variant);

impl Kernel {
    /// Picks the variant: the explicit request if given, else `NCT_KERNEL`, else the best detected.
    /// A forced variant the CPU lacks is an error rather than a silent fallback, so a benchmark or
    /// test never measures something other than what it asked for.
    pub fn resolve(requested: Option<Variant>) -> Result<Kernel, KernelError> {
        let variant = match requested {
            Some(v) => Some(v),
            None => match std::env::var(KERNEL_ENV) {
                Ok(value) => Variant::parse(&value)?,
                Err(_) => None,
            },
        }
        .unwrap_or_else(Variant::best);
        if variant.is_supported() {
            Ok(Kernel(variant))
        } else {
            Err(KernelError::UnsupportedVariant(variant.name()))
        }
    }

    pub fn variant(self) -> Variant {
        self.0
    }
}
