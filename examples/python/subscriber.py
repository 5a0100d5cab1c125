"""A fanout subscriber in Python: opens a stream, prints each record as a JSON line, acks it.

usage: subscriber.py --server HOST:PORT --topic T --subscription S [--count N]

Stubs come from proto/fanout/v1/fanout.proto (examples/setup generates them). One shard;
with several, open one stream per shard (docs/CLIENTS.md).
"""

import argparse
import json
import queue
import sys

import grpc

from fanout.v1 import fanout_pb2 as pb
from fanout.v1 import fanout_pb2_grpc as rpc


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--server", required=True)
    ap.add_argument("--topic", required=True)
    ap.add_argument("--subscription", required=True)
    ap.add_argument("--count", type=int, default=0, help="stop after N records (0: never)")
    args = ap.parse_args()

    # Requests go out as the response loop puts them here; None half-closes the stream.
    requests: "queue.Queue[pb.SubscribeRequest | None]" = queue.Queue()
    requests.put(pb.SubscribeRequest(open=pb.Open(
        topic=args.topic, subscription=args.subscription,
        max_in_flight_records=100, client_id="python-example")))

    def outgoing():
        while (r := requests.get()) is not None:
            yield r

    seen = 0
    with grpc.insecure_channel(args.server) as channel:
        responses = rpc.FanoutStub(channel).Subscribe(outgoing())
        try:
            for response in responses:
                if response.WhichOneof("kind") != "batch":
                    continue  # `opened`
                done: dict[int, list[pb.OffsetRange]] = {}
                for record, attempt in zip(response.batch.records, response.batch.attempts):
                    print(json.dumps({"partition": record.partition, "offset": record.offset,
                                      "attempt": attempt}), flush=True)
                    done.setdefault(record.partition, []).append(
                        pb.OffsetRange(first=record.offset, last=record.offset))
                    seen += 1
                    if args.count and seen >= args.count:
                        break
                # One ack per batch, offsets by partition (merging them into ranges is optional).
                requests.put(pb.SubscribeRequest(ack=pb.Ack(partitions=[
                    pb.PartitionRanges(partition=p, ranges=r) for p, r in done.items()])))
                if args.count and seen >= args.count:
                    requests.put(None)  # half-close: the server ends the call
                    # Batches sent before it saw the half-close go back to the subscription.
                    for _ in responses:
                        pass
                    break
        except grpc.RpcError as e:
            print(f"subscribe ended: {e.code().name}: {e.details()}", file=sys.stderr)
            return 0 if args.count and seen >= args.count else 1
        finally:
            requests.put(None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
