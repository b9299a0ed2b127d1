"""The rules of rooms, dispatches and jobs, with no I/O: events in, decisions out, time passed in."""
