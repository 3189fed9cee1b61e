package scale

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/serializer/protobuf"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes/scheme"
)

// etcdTxnOps is how many puts go in one etcd transaction: etcd's default --max-txn-ops.
const etcdTxnOps = 128

// bulkPods writes pods [from, to), each with the status its kubelet would have reported, straight into etcd in
// the form the API server stores them (protobuf behind the "k8s\x00" prefix, under /registry/pods/NS/NAME),
// through etcd's JSON gateway, etcdTxnOps to a transaction. The API server's watch cache takes them from etcd's
// watch as it takes its own writes; it is the fill only: every pod the benchmark times is created through the
// API. Through the API, a pod is two writes (the create, then the status), about 140 a second on this machine:
// 35 minutes for 150,000 pods.
func (f *filler) bulkPods(ctx context.Context, etcdURL string, from, to int) error {
	enc := protobuf.NewSerializer(scheme.Scheme, scheme.Scheme)
	client := &http.Client{Timeout: time.Minute}
	batches := (to - from + etcdTxnOps - 1) / etcdTxnOps
	return parallel(batches, func(b int) error {
		type put struct {
			Key   string `json:"key"`
			Value string `json:"value"`
		}
		type op struct {
			Put put `json:"request_put"`
		}
		var txn struct {
			Success []op `json:"success"`
		}
		for j := from + b*etcdTxnOps; j < min(to, from+(b+1)*etcdTxnOps); j++ {
			p := f.layout.pod(j)
			p.TypeMeta = metav1.TypeMeta{APIVersion: "v1", Kind: "Pod"}
			p.UID = types.UID(fmt.Sprintf("00000000-0000-4000-8000-%012x", j))
			p.CreationTimestamp = metav1.Now()
			p.Spec.RestartPolicy, p.Spec.DNSPolicy = corev1.RestartPolicyAlways, corev1.DNSClusterFirst
			p.Spec.SchedulerName, p.Spec.ServiceAccountName = corev1.DefaultSchedulerName, "default"
			f.layout.podStatus(p, j)
			var buf bytes.Buffer
			if err := enc.Encode(p, &buf); err != nil {
				return fmt.Errorf("encode pod %d: %w", j, err)
			}
			key := "/registry/pods/" + p.Namespace + "/" + p.Name
			txn.Success = append(txn.Success, op{put{base64.StdEncoding.EncodeToString([]byte(key)),
				base64.StdEncoding.EncodeToString(buf.Bytes())}})
		}
		body, err := json.Marshal(txn)
		if err != nil {
			return err
		}
		return retry(ctx, "etcd transaction", func() error {
			req, err := http.NewRequestWithContext(ctx, http.MethodPost, etcdURL+"/v3/kv/txn", bytes.NewReader(body))
			if err != nil {
				return err
			}
			resp, err := client.Do(req)
			if err != nil {
				return err
			}
			defer resp.Body.Close()
			reply, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
			if resp.StatusCode != http.StatusOK {
				return fmt.Errorf("etcd: %s: %s", resp.Status, reply)
			}
			var r struct {
				Succeeded bool `json:"succeeded"`
			}
			if err := json.Unmarshal(reply, &r); err != nil || !r.Succeeded {
				return fmt.Errorf("etcd transaction not applied: %s", reply)
			}
			return nil
		})
	})
}

// countPods lists every pod through the API server, a page at a time, and returns how many there are: the
// check that a bulk fill reached the API server whole.
func (f *filler) countPods(ctx context.Context) (int, error) {
	n, cont := 0, ""
	for {
		list, err := f.client.CoreV1().Pods("").List(ctx, metav1.ListOptions{Limit: 5000, Continue: cont})
		if err != nil {
			return n, err
		}
		n += len(list.Items)
		if cont = list.Continue; cont == "" {
			return n, nil
		}
	}
}
