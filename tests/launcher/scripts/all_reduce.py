"""A rank that joins a gloo group through the launcher's env:// variables and all-reduces rank+1."""
import torch
import torch.distributed as dist

torch.set_num_threads(1)
dist.init_process_group("gloo")
rank, world = dist.get_rank(), dist.get_world_size()
value = torch.tensor([float(rank + 1)])
dist.all_reduce(value)
print(f"all_reduce rank={rank} world={world} sum={value.item():g}", flush=True)
dist.destroy_process_group()
