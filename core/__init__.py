"""Switchboard's public API: everything a plugin needs, from one place.

    from core import hookimpl, Decision, CallContext, Ice, Dice, ConnectPstn, Say, Key

Plugins, built-in or third-party, import only these names; the modules behind them
(``core.events``, ``core.svaml``, ``core.decisions``, ...) may move. The hook contract
itself, with every hook's signature and meaning, is ``core.hookspecs``, rendered in
docs/plugins.md.
"""

from core.cli import csv_cell, csv_writer, pass_runtime
from core.config import Key, PluginConfig, between, non_negative, positive
from core.console.page import ConsolePage, ConsoleRequest
from core.decisions import Decision
from core.events import (
    Ace,
    Amd,
    CallHeader,
    Destination,
    Dice,
    Event,
    Ice,
    MenuResult,
    Money,
    Notify,
    Pie,
    is_e164,
)
from core.hookspecs import hookimpl
from core.context import CallContext
from core.metrics import StoreGauges
from core.trace import PluginResult, Trace
from core.plugins import PluginError
from core.store import Migration, Store, StoreError, StoreTimeout, Tx
from core.svaml import (
    MAX_DURATION,
    Action,
    AmdOptions,
    Answer,
    ConferenceDtmfOptions,
    ConnectConf,
    ConnectMxp,
    ConnectPstn,
    ConnectSip,
    ConnectStream,
    Continue,
    Endpoint,
    Hangup,
    Header,
    Instruction,
    Menu,
    MenuOption,
    Park,
    PlayFiles,
    RecordingOptions,
    RunMenu,
    Say,
    SendDtmf,
    SetCookie,
    StartRecording,
    StopRecording,
    StreamingOptions,
    Svaml,
    SvamlError,
    TranscriptionOptions,
)

__all__ = [
    # the contract
    "hookimpl",
    "CallContext",
    "PluginConfig",
    "Trace",
    "PluginResult",
    "StoreGauges",
    "Decision",
    "PluginError",
    "pass_runtime",
    "csv_cell",
    "csv_writer",
    # the operator console
    "ConsolePage",
    "ConsoleRequest",
    # events
    "Event",
    "Ice",
    "Ace",
    "Pie",
    "is_e164",
    "Dice",
    "Notify",
    "Amd",
    "CallHeader",
    "Destination",
    "MenuResult",
    "Money",
    # SVAML: actions, instructions and their parts
    "Svaml",
    "SvamlError",
    "Action",
    "Instruction",
    "Hangup",
    "Continue",
    "ConnectPstn",
    "ConnectMxp",
    "ConnectConf",
    "ConnectSip",
    "ConnectStream",
    "RunMenu",
    "Park",
    "PlayFiles",
    "Say",
    "SendDtmf",
    "SetCookie",
    "Answer",
    "StartRecording",
    "StopRecording",
    "Endpoint",
    "Header",
    "AmdOptions",
    "ConferenceDtmfOptions",
    "StreamingOptions",
    "Menu",
    "MenuOption",
    "RecordingOptions",
    "TranscriptionOptions",
    "MAX_DURATION",
    # settings
    "Key",
    "between",
    "non_negative",
    "positive",
    # the store
    "Store",
    "Tx",
    "Migration",
    "StoreError",
    "StoreTimeout",
]
