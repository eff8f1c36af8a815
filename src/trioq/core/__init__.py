"""The queue itself, free of HTTP: the model and its codec (:class:`QueueState`, sans
I/O, times passed in) and the :class:`Engine` that elects a leader and group-commits
mutations to a :class:`~trioq.storage.Storage`.
"""

from __future__ import annotations

from ._config import EngineConfig as EngineConfig
from ._engine import Engine as Engine
from ._engine import EngineSnapshot as EngineSnapshot
from ._engine import Role as Role
from ._state import Limits as Limits
from ._state import NewJob as NewJob
from ._state import QueueState as QueueState
