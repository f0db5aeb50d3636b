"""Relax -> VM executable: the pass pipeline, buildsys' default CPU schedules and weight packing,
MetaSchedule tuning, pass names."""
