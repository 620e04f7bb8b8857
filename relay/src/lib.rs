//! relay: a media and file relay appliance for closed organisational intranets.
