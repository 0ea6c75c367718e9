//! A directory tree walked on all worker threads: each directory is one
//! task, which handles its entries and names the subdirectories to visit.
//! Callers pass directories as paths relative to a root and re-open them
//! beneath it, so that pending work holds no file descriptor.

use std::sync::Mutex;

/// Calls `visit` for each of the `start` directories and then for every
/// directory it returns, in parallel. The first error stops the walk
/// (directories already started finish) and is returned.
pub fn par_walk<T, E, F>(start: Vec<T>, visit: F) -> Result<(), E>
where
    T: Send,
    E: Send,
    F: Fn(T) -> Result<Vec<T>, E> + Sync,
{
    let failed: Mutex<Option<E>> = Mutex::new(None);
    rayon::scope(|s| {
        for dir in start {
            spawn(s, &visit, &failed, dir);
        }
    });
    match failed.into_inner().unwrap() {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

fn spawn<'s, T, E, F>(s: &rayon::Scope<'s>, visit: &'s F, failed: &'s Mutex<Option<E>>, dir: T)
where
    T: Send + 's,
    E: Send,
    F: Fn(T) -> Result<Vec<T>, E> + Sync,
{
    s.spawn(move |s| {
        if failed.lock().unwrap().is_some() {
            return;
        }
        match visit(dir) {
            Ok(subdirs) => {
                for sub in subdirs {
                    spawn(s, visit, failed, sub);
                }
            }
            Err(e) => {
                failed.lock().unwrap().get_or_insert(e);
            }
        }
    });
}
