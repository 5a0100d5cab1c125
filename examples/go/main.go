// A fanout subscriber in Go: opens a stream, prints each record as a JSON line, acks it.
//
// usage: subscriber -server HOST:PORT -topic T -subscription S [-count N]
//
// Stubs come from proto/fanout/v1/fanout.proto (examples/setup generates them into
// fanoutpb/). One shard; with several, open one stream per shard (docs/CLIENTS.md).
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	pb "fanout.example/subscriber/fanoutpb"
)

func main() {
	server := flag.String("server", "", "host:port of a fanout shard")
	topic := flag.String("topic", "", "topic")
	sub := flag.String("subscription", "", "subscription")
	count := flag.Int("count", 0, "stop after N records (0: never)")
	flag.Parse()

	conn, err := grpc.NewClient(*server, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		fail(err)
	}
	defer conn.Close()
	stream, err := pb.NewFanoutClient(conn).Subscribe(context.Background())
	if err != nil {
		fail(err)
	}
	open := &pb.Open{Topic: *topic, Subscription: *sub, MaxInFlightRecords: 100, ClientId: "go-example"}
	if err := stream.Send(&pb.SubscribeRequest{Kind: &pb.SubscribeRequest_Open{Open: open}}); err != nil {
		fail(err)
	}
	seen := 0
	for {
		resp, err := stream.Recv()
		if err == io.EOF {
			return
		}
		if err != nil {
			fail(err)
		}
		batch := resp.GetBatch()
		if batch == nil {
			continue // `opened`
		}
		done := map[int32][]*pb.OffsetRange{}
		for i, r := range batch.Records {
			line, _ := json.Marshal(map[string]any{"partition": r.Partition, "offset": r.Offset, "attempt": batch.Attempts[i]})
			fmt.Println(string(line))
			done[r.Partition] = append(done[r.Partition], &pb.OffsetRange{First: r.Offset, Last: r.Offset})
			seen++
			if *count > 0 && seen >= *count {
				break
			}
		}
		ack := &pb.Ack{}
		for p, ranges := range done {
			ack.Partitions = append(ack.Partitions, &pb.PartitionRanges{Partition: p, Ranges: ranges})
		}
		if err := stream.Send(&pb.SubscribeRequest{Kind: &pb.SubscribeRequest_Ack{Ack: ack}}); err != nil {
			fail(err)
		}
		if *count > 0 && seen >= *count {
			stream.CloseSend() // the server ends the call; wait for that
			for {
				if _, err := stream.Recv(); err != nil {
					return
				}
			}
		}
	}
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "subscribe:", err)
	os.Exit(1)
}
