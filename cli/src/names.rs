//! Random readable names for temporary apps: `<adjective>-<noun>-<number>`.

const ADJECTIVES: &[&str] = &[
    "amber", "brave", "calm", "clever", "crisp", "dusty", "eager", "fancy", "gentle", "glad", "golden", "happy",
    "jolly", "keen", "lively", "lucky", "mellow", "misty", "nimble", "polite", "proud", "quick", "quiet", "rapid",
    "shiny", "silent", "snowy", "sunny", "swift", "tidy", "witty", "zesty",
];
const NOUNS: &[&str] = &[
    "badger", "beacon", "brook", "canyon", "cedar", "comet", "falcon", "fern", "forest", "harbor", "heron", "island",
    "lagoon", "maple", "meadow", "otter", "panda", "pebble", "pine", "planet", "raven", "river", "robin", "sparrow",
    "spruce", "stone", "thistle", "tiger", "tulip", "valley", "willow", "wren",
];

/// A fresh name such as `quick-otter-4821`; always a valid app name.
pub fn random() -> String {
    let adjective = ADJECTIVES[fastrand::usize(..ADJECTIVES.len())];
    let noun = NOUNS[fastrand::usize(..NOUNS.len())];
    let name = format!("{adjective}-{noun}-{}", fastrand::u32(1000..10000));
    debug_assert!(steady_proto::name::validate(&name).is_ok());
    name
}

#[cfg(test)]
mod tests {
    #[test]
    fn random_names_are_valid_and_vary() {
        let names: std::collections::HashSet<String> = (0..50).map(|_| super::random()).collect();
        assert!(names.len() > 40);
        for name in &names {
            steady_proto::name::validate(name).unwrap();
        }
    }
}
