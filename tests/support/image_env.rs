//! The environment the image gives the operator, for benchmarks that measure
//! it as it ships. Kept free of the rest of the support code, so that the
//! micro-benchmarks can include it alone.

/// The variables the image sets: the `ENV` lines of the Dockerfile's last
/// stage, read rather than repeated, so that the two cannot drift apart.
pub fn image_env() -> Vec<(String, String)> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("Dockerfile");
    let dockerfile = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    let last_stage = dockerfile
        .rsplit_once("\nFROM ")
        .map_or(dockerfile.as_str(), |(_, stage)| stage);
    last_stage
        .lines()
        .filter_map(|line| line.strip_prefix("ENV "))
        .map(|assignment| {
            // Only the plain form is read: a quoted value or several pairs
            // on one line would otherwise be passed on as something else.
            let plain = assignment.split_once('=').filter(|(name, value)| {
                !name.is_empty()
                    && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                    && !value.contains(['"', '\'', ' ', '\\'])
            });
            let (name, value) = plain.unwrap_or_else(|| {
                panic!("Dockerfile: ENV {assignment}: write one unquoted NAME=value per line")
            });
            (name.to_owned(), value.trim_end().to_owned())
        })
        .collect()
}
