//! The input rules every service applies: the gateway before it sends anything, the scheduler
//! before it records anything, the node before it makes anything. One copy, so they cannot
//! disagree about what is valid. Each check returns the reason as text; callers wrap it in their
//! own error (a 422 at the gateway, `invalid_request` on the bus).

use std::collections::BTreeMap;

/// The most environment variables a template, a session or a run may set.
pub const MAX_ENV_ENTRIES: usize = 64;
/// The longest value of one environment variable.
pub const MAX_ENV_VALUE_BYTES: usize = 4 * 1024;
/// The longest template id.
pub const MAX_TEMPLATE_ID_BYTES: usize = 128;
/// The longest template name, in characters.
pub const MAX_NAME_CHARS: usize = 200;
/// The longest timeout a session or template may have: one week.
pub const MAX_SESSION_TIMEOUT_SECS: u64 = 7 * 24 * 3600;
/// The default and the bounds of an execution's timeout, in seconds.
pub const DEFAULT_EXECUTION_TIMEOUT_SECS: u32 = 30;
pub const MAX_EXECUTION_TIMEOUT_SECS: u32 = 3600;
/// More than any one host offers; a typo such as 16384 cores is refused.
pub const MAX_CPU_CORES: f64 = 1024.0;
/// 16 TiB, in MiB.
pub const MAX_MEMORY_MB: u64 = 16 * 1024 * 1024;
/// The largest warm pool a template may ask of each node.
pub const MAX_WARM_POOL_SIZE: u32 = 32;
/// The most code, stdin and env one run takes, measured as the JSON the executor agent receives
/// (escapes included): the agent's request line holds 1 MiB, and the rest of the request needs
/// some of it.
pub const MAX_RUN_JSON_BYTES: usize = 960 * 1024;

/// Whether `name` can be an environment variable's name: `[A-Za-z_][A-Za-z0-9_]*`.
pub fn is_env_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    bytes
        .next()
        .is_some_and(|first| first.is_ascii_alphabetic() || first == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// Environment variables for a container or a run: a bounded number of valid names with
/// bounded values that a process environment can carry (no NUL).
pub fn check_env(env: &BTreeMap<String, String>) -> Result<(), String> {
    if env.len() > MAX_ENV_ENTRIES {
        return Err(format!(
            "env may have at most {MAX_ENV_ENTRIES} entries, not {}",
            env.len()
        ));
    }
    for (name, value) in env {
        if !is_env_name(name) {
            return Err(format!(
                "env name {name:?} is not valid: use [A-Za-z_][A-Za-z0-9_]*"
            ));
        }
        if value.len() > MAX_ENV_VALUE_BYTES {
            return Err(format!(
                "env value of {name} is longer than {MAX_ENV_VALUE_BYTES} bytes"
            ));
        }
        if value.contains('\0') {
            return Err(format!("env value of {name} contains a NUL byte"));
        }
    }
    Ok(())
}

/// A template id: 1 to 128 of `A-Z a-z 0-9 - _ .`.
pub fn check_template_id(id: &str) -> Result<(), String> {
    let valid = !id.is_empty()
        && id.len() <= MAX_TEMPLATE_ID_BYTES
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if valid {
        Ok(())
    } else {
        Err(format!(
            "template id {:?} must have 1 to {MAX_TEMPLATE_ID_BYTES} of A-Z a-z 0-9 - _ .",
            id.chars()
                .take(MAX_TEMPLATE_ID_BYTES + 8)
                .collect::<String>()
        ))
    }
}

/// Text that must say something: 1 to `max_chars` characters, not only white space.
pub fn check_text(field: &str, value: &str, max_chars: usize) -> Result<(), String> {
    if value.trim().is_empty() || value.chars().count() > max_chars {
        return Err(format!("{field} must have 1 to {max_chars} characters"));
    }
    Ok(())
}

/// A session's or template's timeout, in seconds.
pub fn check_session_timeout(seconds: u64) -> Result<(), String> {
    if (1..=MAX_SESSION_TIMEOUT_SECS).contains(&seconds) {
        Ok(())
    } else {
        Err(format!(
            "timeout must be between 1 and {MAX_SESSION_TIMEOUT_SECS} seconds, not {seconds}"
        ))
    }
}

/// An execution's timeout, in seconds.
pub fn check_execution_timeout(seconds: u32) -> Result<(), String> {
    if (1..=MAX_EXECUTION_TIMEOUT_SECS).contains(&seconds) {
        Ok(())
    } else {
        Err(format!(
            "timeout must be between 1 and {MAX_EXECUTION_TIMEOUT_SECS} seconds, not {seconds}"
        ))
    }
}

/// CPU cores and memory (MiB) offered or asked for; `what` names them in the message.
pub fn check_capacity(what: &str, cpu_cores: f64, memory_mb: u64) -> Result<(), String> {
    if !(cpu_cores.is_finite() && cpu_cores > 0.0 && cpu_cores <= MAX_CPU_CORES) {
        return Err(format!(
            "{what} cpu must be more than 0 and at most {MAX_CPU_CORES} cores, not {cpu_cores}"
        ));
    }
    if !(1..=MAX_MEMORY_MB).contains(&memory_mb) {
        return Err(format!(
            "{what} memory must be between 1 and {MAX_MEMORY_MB} MB, not {memory_mb}"
        ));
    }
    Ok(())
}

/// Image references reach the engine inside URL paths; nothing outside this alphabet is needed.
const IMAGE_REFERENCE_EXTRA_CHARS: &[char] = &['.', '_', '-', '/', ':', '@'];

/// Whether `image` is a plain image reference (it is sent inside a URL path).
pub fn is_image_reference(image: &str) -> bool {
    !image.is_empty()
        && image.len() <= 255
        && image
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || IMAGE_REFERENCE_EXTRA_CHARS.contains(&c))
}

/// An image reference such as `sandbox-executor:v1.0`.
pub fn check_image(image: &str) -> Result<(), String> {
    if is_image_reference(image) {
        Ok(())
    } else {
        Err(format!(
            "image {image:?} is not an image reference such as sandbox-executor:v1.0"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(name, value)| ((*name).to_owned(), (*value).to_owned()))
            .collect()
    }

    #[test]
    fn image_references_are_plain() {
        assert!(is_image_reference("sandbox-executor:v1.0"));
        assert!(is_image_reference("registry.local/team/image@sha256:abc"));
        assert!(!is_image_reference(""));
        assert!(!is_image_reference("image?x=1"));
        assert!(!is_image_reference("image name"));
    }

    #[test]
    fn env_is_checked_whole() {
        assert!(check_env(&env(&[("_X1", "v"), ("PATH", "")])).is_ok());
        for bad in [
            env(&[("1X", "v")]),
            env(&[("A-B", "v")]),
            env(&[("", "v")]),
            env(&[("A", "a\0b")]),
            env(&[("A", &"v".repeat(MAX_ENV_VALUE_BYTES + 1))]),
        ] {
            assert!(check_env(&bad).is_err(), "{bad:?}");
        }
        let too_many: BTreeMap<String, String> = (0..=MAX_ENV_ENTRIES)
            .map(|index| (format!("V{index}"), String::new()))
            .collect();
        assert!(check_env(&too_many).is_err());
    }

    #[test]
    fn ids_timeouts_and_capacity_are_bounded() {
        assert!(check_template_id("python-basic.v2_1").is_ok());
        for bad in [
            "",
            "a b",
            "a/b",
            "ü",
            &"t".repeat(MAX_TEMPLATE_ID_BYTES + 1),
        ] {
            assert!(check_template_id(bad).is_err(), "{bad:?}");
        }
        assert!(check_session_timeout(300).is_ok());
        assert!(check_session_timeout(0).is_err());
        assert!(check_session_timeout(MAX_SESSION_TIMEOUT_SECS + 1).is_err());
        assert!(check_execution_timeout(MAX_EXECUTION_TIMEOUT_SECS).is_ok());
        assert!(check_execution_timeout(0).is_err());
        assert!(check_capacity("the", 0.5, 256).is_ok());
        assert!(check_capacity("the", f64::NAN, 256).is_err());
        assert!(check_capacity("the", 1.0, 0).is_err());
        assert!(check_text("name", "  ", 10).is_err());
    }
}
