"""The broker service: the HTTP and WebSocket API over an engine, the fast-failover
probe, settings and metrics. ``python -m trioq.broker`` runs one (see ``--help``)."""

from __future__ import annotations

from ._service import Broker as Broker
from ._service import main as main
from ._settings import BrokerSettings as BrokerSettings
from ._settings import parse_settings as parse_settings
