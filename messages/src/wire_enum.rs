//! `wire_enum!`: an enumeration that travels and is stored as text. One declaration gives the
//! serde names, `as_str`, `ALL`, `Display` and `FromStr`, so the spellings cannot drift apart.

/// A string that names no known value of an enumeration.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown {kind} {value:?}")]
pub struct UnknownValue {
    pub kind: &'static str,
    pub value: String,
}

impl UnknownValue {
    pub fn new(kind: &'static str, value: &str) -> Self {
        Self {
            kind,
            value: value.chars().take(64).collect(),
        }
    }
}

/// Declares `pub enum Name ("what it is") { Variant = "text", ... }`. Attributes on the enum
/// (docs, an extra `derive(Default)`) and on variants (docs, `#[default]`, `#[serde(other)]` for
/// a catch-all of values from newer writers) are kept.
macro_rules! wire_enum {
    (
        $(#[$meta:meta])*
        $vis:vis enum $name:ident ($kind:literal) {
            $( $(#[$variant_meta:meta])* $variant:ident = $text:literal ),+ $(,)?
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
        $vis enum $name {
            $( $(#[$variant_meta])* #[serde(rename = $text)] $variant ),+
        }

        impl $name {
            /// Every value, in declaration order.
            pub const ALL: [$name; <[&str]>::len(&[$(stringify!($variant)),+])] =
                [$($name::$variant),+];

            pub fn as_str(self) -> &'static str {
                match self {
                    $( $name::$variant => $text ),+
                }
            }
        }

        impl ::std::fmt::Display for $name {
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl ::std::str::FromStr for $name {
            type Err = $crate::wire_enum::UnknownValue;
            fn from_str(value: &str) -> Result<Self, Self::Err> {
                $name::ALL
                    .into_iter()
                    .find(|known| known.as_str() == value)
                    .ok_or_else(|| $crate::wire_enum::UnknownValue::new($kind, value))
            }
        }
    };
}
