"""Imported once, by the forkserver that trial processes are forked from (see
`isolation`): sizes the thread pools, then loads the trial libraries, so that a
fresh trial process costs a fork rather than seconds of imports.

Importing it changes the process's thread-pool environment: only the forkserver
should (isolation names it as the forkserver's preload module).
"""

from nbml_server.worker import trial_child

trial_child.set_environment()
trial_child.load_libraries()
