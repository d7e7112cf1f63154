//! Named phases over one shared environment, for the suites whose environment costs too much
//! to start for every test (a control plane, a real node). Each phase is a test of its own,
//! named for what it proves and reported on its own line (libtest-mimic); the phases run in
//! order, one at a time, over one environment that the first phase to run sets up and that is
//! torn down once, after the last.
//!
//! A test file declared with `harness = false` in `e2e/Cargo.toml` hands its phases to [`run`]
//! from its `main`:
//!
//! ```no_run
//! use smtp_relay_e2e::phases::{self, Order};
//!
//! struct Env;
//! fn the_relay_starts(_env: &mut Env) {}
//! fn mail_is_delivered(_env: &mut Env) {}
//!
//! fn main() -> std::process::ExitCode {
//!     phases::run(
//!         Order::Sequential,
//!         || Env,
//!         &[
//!             ("the_relay_starts", the_relay_starts),
//!             ("mail_is_delivered", mail_is_delivered),
//!         ],
//!     )
//! }
//! ```
//!
//! `cargo test --test NAME -- --list` lists the phases and `-- WORD` runs those whose name
//! holds WORD, as with any test. A phase fails by panicking, as a test does.

use std::process::ExitCode;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use libtest_mimic::{Arguments, Completion, Conclusion, Failed, Trial};

/// How the phases of a suite depend on one another.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Order {
    /// Each phase stands on its own in the environment (its own namespace, say): one that
    /// fails does not keep the next from running.
    Independent,
    /// Each phase builds on what the phases before it did. After a failed phase the rest are
    /// skipped, reported as ignored with the name of the phase that failed; a phase whose
    /// predecessors did not run (a filter left them out) fails at once, naming the first.
    Sequential,
}

/// A phase: its name, which says what it proves, and what it does to the environment.
pub type Phase<E> = (&'static str, fn(&mut E));

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Status {
    NotRun,
    /// Started and never finished: it failed.
    Failed,
    Passed,
    Skipped,
}

struct State<E> {
    env: Option<E>,
    setup: Option<fn() -> E>,
    /// The phase that ran the setup.
    setup_in: Option<&'static str>,
    status: Vec<Status>,
}

/// Runs `phases` as tests named by their names, in order, with the arguments of this process
/// (those of `cargo test -- ...`); the environment comes from `setup`, called once, by the
/// first phase to run, and is dropped once every phase is done. Returns the exit code of the
/// run: a failure if a phase failed.
pub fn run<E: Send + 'static>(order: Order, setup: fn() -> E, phases: &[Phase<E>]) -> ExitCode {
    run_with(&Arguments::from_args(), order, setup, phases).exit_code()
}

/// [`run`] with the given arguments; one test thread whatever they say.
fn run_with<E: Send + 'static>(
    args: &Arguments,
    order: Order,
    setup: fn() -> E,
    phases: &[Phase<E>],
) -> Conclusion {
    let mut args = args.clone();
    // In order, one at a time: they share the environment.
    args.test_threads = Some(1);
    let names: Arc<[&'static str]> = phases.iter().map(|(name, _)| *name).collect();
    let shared = Arc::new(Mutex::new(State {
        env: None,
        setup: Some(setup),
        setup_in: None,
        status: vec![Status::NotRun; phases.len()],
    }));
    let trials = phases
        .iter()
        .enumerate()
        .map(|(i, &(name, phase))| {
            let (shared, names) = (shared.clone(), names.clone());
            Trial::ignorable_test(name, move || {
                let mut guard = shared.lock().unwrap_or_else(PoisonError::into_inner);
                run_phase(&mut guard, order, &names, i, phase)
            })
        })
        .collect();
    let conclusion = libtest_mimic::run(&args, trials);
    let env = shared
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .env
        .take();
    if let Some(env) = env {
        let t = Instant::now();
        drop(env);
        eprintln!("environment torn down in {:?}", t.elapsed());
    }
    conclusion
}

/// Phase `i`: checked against the phases before it, the environment set up if it is the
/// first to run, then run. A panic leaves its status `Failed`.
fn run_phase<E>(
    state: &mut State<E>,
    order: Order,
    names: &[&'static str],
    i: usize,
    phase: fn(&mut E),
) -> Result<Completion, Failed> {
    let name = names[i];
    if order == Order::Sequential {
        let first_not_passed = state.status[..i].iter().position(|s| *s != Status::Passed);
        if let Some(j) = first_not_passed {
            let before = names[j];
            if state.status[j] == Status::NotRun {
                state.status[i] = Status::Failed;
                return Err(format!(
                    "phase `{name}` builds on the phases before it, and `{before}` did not run: \
                     run the suite whole, or with a filter that keeps every phase up to this one"
                )
                .into());
            }
            state.status[i] = Status::Skipped;
            return Ok(Completion::ignored_with(format!(
                "skipped: phase `{before}` failed"
            )));
        }
    }
    let State {
        env,
        setup,
        setup_in,
        status,
    } = state;
    let env = match env {
        Some(env) => env,
        None => {
            let Some(setup) = setup.take() else {
                status[i] = Status::Skipped;
                return Ok(Completion::ignored_with(format!(
                    "skipped: the environment did not start (phase `{}`)",
                    setup_in.unwrap_or("?")
                )));
            };
            *setup_in = Some(name);
            status[i] = Status::Failed;
            eprintln!("setting up the environment (phase {name})");
            let t = Instant::now();
            let ready = env.insert(setup());
            eprintln!("environment ready in {:?}", t.elapsed());
            ready
        }
    };
    status[i] = Status::Failed;
    let t = Instant::now();
    phase(env);
    eprintln!("phase {name}: {:?}", t.elapsed());
    status[i] = Status::Passed;
    Ok(Completion::Completed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::panic::{catch_unwind, AssertUnwindSafe};
    use std::sync::atomic::{AtomicUsize, Ordering};

    type Env = Vec<&'static str>;

    fn pass(_: &mut Env) {}

    fn fail(_: &mut Env) {
        panic!("this phase fails");
    }

    /// Runs the phases at `run` (a filter's choice) as their trials do, without libtest-mimic's
    /// output: the outcome of each.
    fn outcomes(
        order: Order,
        setup: fn() -> Env,
        phases: &[Phase<Env>],
        run: &[usize],
    ) -> Vec<&'static str> {
        let names: Vec<&'static str> = phases.iter().map(|(name, _)| *name).collect();
        let mut state = State {
            env: None,
            setup: Some(setup),
            setup_in: None,
            status: vec![Status::NotRun; phases.len()],
        };
        run.iter()
            .map(|&i| {
                let phase = phases[i].1;
                let outcome = catch_unwind(AssertUnwindSafe(|| {
                    run_phase(&mut state, order, &names, i, phase)
                }));
                match outcome {
                    Ok(Ok(Completion::Completed)) => "passed",
                    Ok(Ok(Completion::Ignored { .. })) => "ignored",
                    Ok(Err(_)) | Err(_) => "failed",
                }
            })
            .collect()
    }

    static SEQUENTIAL_SETUPS: AtomicUsize = AtomicUsize::new(0);

    #[test]
    fn sequential_phases_after_a_failure_are_skipped_and_the_setup_runs_once() {
        let setup = || {
            SEQUENTIAL_SETUPS.fetch_add(1, Ordering::SeqCst);
            Env::new()
        };
        let phases: [Phase<Env>; 4] = [("a", pass), ("b", fail), ("c", pass), ("d", pass)];
        let got = outcomes(Order::Sequential, setup, &phases, &[0, 1, 2, 3]);
        assert_eq!(got, ["passed", "failed", "ignored", "ignored"]);
        assert_eq!(SEQUENTIAL_SETUPS.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn independent_phases_run_after_a_failure() {
        let phases: [Phase<Env>; 3] = [("a", fail), ("b", pass), ("c", pass)];
        let got = outcomes(Order::Independent, Env::new, &phases, &[0, 1, 2]);
        assert_eq!(got, ["failed", "passed", "passed"]);
    }

    static FILTERED_SETUPS: AtomicUsize = AtomicUsize::new(0);

    #[test]
    fn a_sequential_phase_without_its_predecessors_fails_without_a_setup() {
        let setup = || {
            FILTERED_SETUPS.fetch_add(1, Ordering::SeqCst);
            Env::new()
        };
        let phases: [Phase<Env>; 3] = [("first", pass), ("second", pass), ("third", pass)];
        let got = outcomes(Order::Sequential, setup, &phases, &[2]);
        assert_eq!(got, ["failed"]);
        assert_eq!(FILTERED_SETUPS.load(Ordering::SeqCst), 0);
    }

    static FAILED_SETUPS: AtomicUsize = AtomicUsize::new(0);

    #[test]
    fn a_failed_setup_is_not_retried() {
        fn setup() -> Env {
            FAILED_SETUPS.fetch_add(1, Ordering::SeqCst);
            panic!("the environment does not start");
        }
        let phases: [Phase<Env>; 3] = [("a", pass), ("b", pass), ("c", pass)];
        let got = outcomes(Order::Independent, setup, &phases, &[0, 1, 2]);
        assert_eq!(got, ["failed", "ignored", "ignored"]);
        assert_eq!(FAILED_SETUPS.load(Ordering::SeqCst), 1);
    }

    static DROPS: AtomicUsize = AtomicUsize::new(0);

    struct Counted;

    impl Drop for Counted {
        fn drop(&mut self) {
            DROPS.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn the_environment_is_dropped_once_after_the_last_phase() {
        fn check(_: &mut Counted) {
            assert_eq!(
                DROPS.load(Ordering::SeqCst),
                0,
                "not dropped between phases"
            );
        }
        let phases: [Phase<Counted>; 2] = [("a", check), ("b", check)];
        let args = Arguments {
            quiet: true,
            ..Arguments::default()
        };
        let c = run_with(&args, Order::Sequential, || Counted, &phases);
        assert_eq!((c.num_passed, c.num_failed), (2, 0));
        assert_eq!(DROPS.load(Ordering::SeqCst), 1);
    }
}
