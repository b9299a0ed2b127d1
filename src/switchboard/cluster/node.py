"""This process as one node of a cluster: its Redis client, its lease in the registry, its room placement."""

from collections.abc import Callable

from switchboard.cluster.nodes import NodeRegistry, NodeStats
from switchboard.cluster.placement import RoomPlacement
from switchboard.cluster.redis_client import connect
from switchboard.cluster.settings import ClusterSettings, RedisSettings


class ClusterNode:
    def __init__(
        self,
        redis_settings: RedisSettings,
        settings: ClusterSettings,
        node_id: str,
        url: str,
        stats: Callable[[], NodeStats],
        version: str = "",
    ) -> None:
        self.settings = settings
        self.node_id = node_id
        self.redis_address = ", ".join(
            (redis_settings.address,)
            if redis_settings.address
            else redis_settings.sentinel_addresses or redis_settings.cluster_addresses
        )
        """For the operator's messages: where this node looks for Redis."""
        self.redis = connect(redis_settings)
        self.registry = NodeRegistry(self.redis, node_id, url, settings.lease, stats, version)
        self.placement = RoomPlacement(
            self.registry, settings.sort_by, settings.cpu_load_limit, settings.room_slack
        )

    async def start(self) -> None:
        await self.registry.start()

    async def stop(self) -> None:
        await self.registry.stop()
        await self.redis.aclose()
