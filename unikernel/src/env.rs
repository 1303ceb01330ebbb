//! env: the baked ENV of the stage, `KEY=VALUE` entries.

impl crate::Runtime {
    /// The value of `key`, if the environment has it (the last entry wins, as with ENV).
    pub fn env(&self, key: &str) -> Option<&'static str> {
        self.envs().filter(|(k, _)| *k == key).last().map(|(_, v)| v)
    }

    /// All entries as (key, value), in the order of the config.
    pub fn envs(&self) -> impl Iterator<Item = (&'static str, &'static str)> + use<> {
        crate::config::envs().map(|e| e.split_once('=').unwrap_or((e, "")))
    }
}
