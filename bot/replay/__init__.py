"""`tradebot replay`: a recording run through a fleet of its own (fleet), driven in market time
(driver), summed up as a report (report, page). How it works and what it can tell: docs/replay.md."""
