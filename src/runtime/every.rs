//! Periodic work on a shard: every timer loop of the broker is this one.

use std::future::Future;
use std::rc::Rc;
use std::time::Duration;

use super::Shutdown;

/// Runs `tick` every `period` on the current executor, until `owner`'s shutdown starts:
/// sleep, then tick, then look at the latch again. A tick that is still running when
/// shutdown starts finishes; none starts after.
pub fn spawn_every<T, F, Fut>(period: Duration, owner: &Rc<T>, mut tick: F)
where
    T: AsRef<Shutdown> + 'static,
    F: FnMut(Rc<T>) -> Fut + 'static,
    Fut: Future<Output = ()>,
{
    let owner = Rc::clone(owner);
    glommio::spawn_local(async move {
        while !(*owner).as_ref().is_stopping() {
            glommio::timer::sleep(period).await;
            tick(Rc::clone(&owner)).await;
        }
    })
    .detach();
}
