"""ComponentResources: each wires commands and broker objects for one part of the queue."""

from .broker_backups import BrokerBackups
from .broker_migration import BrokerMigration
from .celery_worker_service import CeleryWorkerService
from .edd_settings_file import EddSettingsFile
from .edd_vhost import EddVhost
from .flower_service import FlowerService
from .rabbit_broker import RabbitBroker
from .service_account import ServiceAccount
from .stack_health import StackHealth

# Type tokens are part of every resource's URN: renaming one orphans existing stacks.
TYPE_TOKENS = {
    "RabbitBroker": "edd:infra:RabbitBroker",
    "EddVhost": "edd:infra:EddVhost",
    "ServiceAccount": "edd:infra:ServiceAccount",
    "CeleryWorkerService": "edd:infra:CeleryWorkerService",
    "FlowerService": "edd:infra:FlowerService",
    "EddSettingsFile": "edd:infra:EddSettingsFile",
    "BrokerMigration": "edd:infra:BrokerMigration",
    "BrokerBackups": "edd:infra:BrokerBackups",
    "StackHealth": "edd:infra:StackHealth",
}

__all__ = [
    "RabbitBroker",
    "EddVhost",
    "ServiceAccount",
    "CeleryWorkerService",
    "FlowerService",
    "EddSettingsFile",
    "BrokerMigration",
    "BrokerBackups",
    "StackHealth",
    "TYPE_TOKENS",
]
