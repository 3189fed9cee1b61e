package main

import (
	"context"
	"errors"
	"fmt"
	"sort"

	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/moatfw/moat/internal/agentapi"
	"github.com/moatfw/moat/internal/api/v1alpha1"
	"github.com/moatfw/moat/internal/report"
	"github.com/moatfw/moat/internal/resolve"
)

// cluster is the policy API as the API server holds it.
type cluster struct {
	config     *v1alpha1.FirewallConfig
	policies   []v1alpha1.FirewallPolicy
	namespaces []v1alpha1.Namespace
}

func readCluster(ctx context.Context, kubeconfig string) (*cluster, error) {
	cfg, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
	if err != nil {
		return nil, fmt.Errorf("kubeconfig %s: %w", kubeconfig, err)
	}
	dyn, err := dynamic.NewForConfig(cfg)
	if err != nil {
		return nil, err
	}
	client, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, err
	}
	c := &cluster{}
	nss, err := client.CoreV1().Namespaces().List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, fmt.Errorf("list namespaces: %w", err)
	}
	c.namespaces = nss.Items
	gv := v1alpha1.SchemeGroupVersion
	pols, err := dyn.Resource(gv.WithResource(v1alpha1.ResourceFirewallPolicies)).List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, fmt.Errorf("list firewallpolicies (are Moat's CRDs installed?): %w", err)
	}
	for _, u := range pols.Items {
		var p v1alpha1.FirewallPolicy
		if err := runtime.DefaultUnstructuredConverter.FromUnstructured(u.Object, &p); err != nil {
			return nil, fmt.Errorf("FirewallPolicy %s: %w", u.GetName(), err)
		}
		c.policies = append(c.policies, p)
	}
	cfgs, err := dyn.Resource(gv.WithResource(v1alpha1.ResourceFirewallConfigs)).List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, fmt.Errorf("list firewallconfigs: %w", err)
	}
	for _, u := range cfgs.Items {
		if u.GetName() != v1alpha1.DefaultConfigName {
			continue
		}
		var fc v1alpha1.FirewallConfig
		if err := runtime.DefaultUnstructuredConverter.FromUnstructured(u.Object, &fc); err != nil {
			return nil, fmt.Errorf("FirewallConfig %s: %w", u.GetName(), err)
		}
		if len(fc.Validate()) == 0 {
			c.config = &fc
		}
	}
	return c, nil
}

// clusterPolicies is every FirewallPolicy with the state the enforcers wrote (Pending when none did yet).
func clusterPolicies(ctx context.Context, kubeconfig string) ([]agentapi.Policy, error) {
	c, err := readCluster(ctx, kubeconfig)
	if err != nil {
		return nil, err
	}
	out := []agentapi.Policy{}
	for i := range c.policies {
		p := &c.policies[i]
		ap := agentapi.Policy{Name: p.Name, State: "Pending", Origin: "kubernetes", Priority: resolve.Priority(p),
			Mode: string(v1alpha1.ModeEnforce), Namespaces: resolve.Selected(p, c.namespaces),
			Rules: len(p.Spec.Egress) + len(p.Spec.Ingress), Reason: "no enforcer has judged it yet"}
		if p.Spec.Mode != "" {
			ap.Mode = string(p.Spec.Mode)
		}
		if cond := meta.FindStatusCondition(p.Status.Conditions, v1alpha1.ConditionAccepted); cond != nil {
			ap.State, ap.Reason = "Accepted", ""
			if cond.Status != metav1.ConditionTrue {
				ap.State, ap.Reason = "Invalid", cond.Message
			}
		}
		if errs := p.Validate(); len(errs) > 0 {
			ap.State, ap.Reason = "Invalid", errors.Join(errs...).Error()
		}
		if len(ap.Namespaces) == 0 {
			ap.Warnings = []string{resolve.SelectsNothing}
		}
		out = append(out, ap)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}

// clusterReport is the report of the cluster's valid policies.
func clusterReport(ctx context.Context, kubeconfig string) (report.Report, error) {
	c, err := readCluster(ctx, kubeconfig)
	if err != nil {
		return report.Report{}, err
	}
	var valid []v1alpha1.FirewallPolicy
	for _, p := range c.policies {
		if len(p.Validate()) == 0 {
			valid = append(valid, p)
		}
	}
	return report.Build(report.Input{Config: c.config, Policies: valid, Namespaces: c.namespaces}), nil
}
