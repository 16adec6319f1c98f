"""Print the cluster's nodes and actors as one JSON line (Ray's state API), for tests that run it
inside a network namespace where the cluster is reachable. Address from RAY_ADDRESS."""

import json
import os

from ray.util.state import list_actors, list_nodes

address = os.environ["RAY_ADDRESS"]
nodes = [{"id": n.node_id, "ip": n.node_ip, "state": n.state, "labels": n.labels,
          "resources": n.resources_total} for n in list_nodes(address=address)]
actors = [{"id": a.actor_id, "class": a.class_name, "state": a.state, "pid": a.pid, "node": a.node_id,
           "name": a.name, "restarts": a.num_restarts, "placement_group": a.placement_group_id}
          for a in list_actors(address=address, limit=1000, detail=True)]
print(json.dumps({"nodes": nodes, "actors": actors}))
