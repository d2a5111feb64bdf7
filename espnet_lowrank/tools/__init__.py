"""The console commands behind ``espnet-lowrank <command>`` (:mod:`espnet_lowrank.cli`): each module a
thin command line over functions that the studies and the stages call directly."""
