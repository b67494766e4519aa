//! The controller manager's controllers, each a level-triggered reconcile loop over the API.
