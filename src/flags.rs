//! Command-line flags generated from the settings table (`indexer::config::SETTINGS`), so a setting's flag, its
//! environment variable, its file key and its default are spelled in one place. `daemon` takes the flags of the
//! `Daemon` and `Shared` rows, `crawl` those of the `Shared` rows.

use clap::{Arg, ArgAction, ArgMatches, Args, Command, FromArgMatches};
use indexer::config::{Config, Flag, Kind, SETTINGS, Setting};

/// The setting flags given to one command, in table order. `DAEMON` selects the daemon's set.
#[derive(Clone, Debug, Default)]
pub struct SettingFlags<const DAEMON: bool> {
    given: Vec<(&'static Setting, Vec<String>)>,
}

fn flag_of(setting: &Setting, daemon: bool) -> Option<&'static str> {
    match setting.flag {
        Flag::Shared(flag) => Some(flag),
        Flag::Daemon(flag) if daemon => Some(flag),
        _ => None,
    }
}

impl<const DAEMON: bool> SettingFlags<DAEMON> {
    /// Applies the given flags on top of `config` (which already holds defaults, file and environment).
    ///
    /// # Errors
    /// For an invalid value (the message names the flag).
    pub fn apply(&self, config: &mut Config) -> anyhow::Result<()> {
        for (setting, values) in &self.given {
            config.set_flag(setting, values)?;
        }
        Ok(())
    }
}

impl<const DAEMON: bool> FromArgMatches for SettingFlags<DAEMON> {
    fn from_arg_matches(matches: &ArgMatches) -> Result<Self, clap::Error> {
        let given = SETTINGS
            .iter()
            .filter_map(|s| {
                let values = matches.get_many::<String>(flag_of(s, DAEMON)?)?;
                Some((s, values.cloned().collect()))
            })
            .collect();
        Ok(SettingFlags { given })
    }

    fn update_from_arg_matches(&mut self, matches: &ArgMatches) -> Result<(), clap::Error> {
        *self = SettingFlags::from_arg_matches(matches)?;
        Ok(())
    }
}

impl<const DAEMON: bool> Args for SettingFlags<DAEMON> {
    fn augment_args(cmd: Command) -> Command {
        SETTINGS.iter().fold(cmd, |cmd, s| {
            let Some(flag) = flag_of(s, DAEMON) else { return cmd };
            let action = if s.kind == Kind::List { ArgAction::Append } else { ArgAction::Set };
            cmd.arg(Arg::new(flag).long(flag).help(s.doc).action(action))
        })
    }

    fn augment_args_for_update(cmd: Command) -> Command {
        Self::augment_args(cmd)
    }
}
